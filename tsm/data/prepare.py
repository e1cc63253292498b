"""``tsm-prepare``: download and prepare TFDS datasets as ArrayRecord, once.

Usage::

  pip install -e ".[data]"          # TensorFlow (CPU) is needed to prepare, not to train
  tsm-prepare mnist cifar10 [--data_dir DIR]
  tsm-prepare cars196 --local_files ~/downloads/cars   # dead URLs: give the files

Runs ``builder.download_and_prepare(file_format="array_record")`` for each name, then
one label pass that fills tsm's label cache (so the first training run starts at once).
``--overwrite`` removes and regenerates a dataset prepared earlier (e.g. in TFRecord
format, which tsm cannot read), reusing downloads. ``--local_files DIR`` serves any download whose file name (the last
part of its URL, e.g. ``cars_train.tgz``) is in DIR from there instead of the network.
See notes/data.md for each dataset's sizes and quirks.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import shutil
import sys
import time
from typing import Iterator, Sequence

from tsm.data import spec as spec_lib

_EXTRA = 'pip install -e ".[data]"'


def _require_tensorflow() -> None:
  try:
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise SystemExit(f"tsm-prepare: preparing TFDS data needs TensorFlow; install it with "
                     f"`{_EXTRA}` (training itself does not need it).") from None


def _local_path(url: str, local_dir: pathlib.Path) -> pathlib.Path | None:
  name = url.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
  path = local_dir / name
  return path if name and path.exists() else None


@contextlib.contextmanager
def local_mirror(manager_cls, local_dir: str | os.PathLike | None) -> Iterator[None]:
  """Serves downloads from ``local_dir`` when a file with the URL's name is there.

  Args:
    manager_cls: the download manager class to patch (``tfds.download.DownloadManager``).
    local_dir: folder of downloaded files (None: no change).

  Yields:
    None; inside the context ``download`` / ``download_and_extract`` take files of
    ``local_dir`` (extracting archives) and fetch the others as usual.
  """
  if local_dir is None:
    yield
    return
  import tree  # pylint: disable=g-import-not-at-top  (dm-tree, a tfds dependency)
  local = pathlib.Path(local_dir).expanduser()
  orig_download = manager_cls.download
  orig_download_and_extract = manager_cls.download_and_extract

  def routed(self, urls, extract: bool):
    def one(url):
      path = _local_path(str(url), local)
      if path is not None:
        print(f"tsm-prepare: using local {path} for {url}")
        return self.extract(path) if extract else path
      fetch = orig_download_and_extract if extract else orig_download
      return fetch(self, url)
    return tree.map_structure(one, urls)

  manager_cls.download = lambda self, urls: routed(self, urls, False)
  manager_cls.download_and_extract = lambda self, urls: routed(self, urls, True)
  try:
    yield
  finally:
    manager_cls.download = orig_download
    manager_cls.download_and_extract = orig_download_and_extract


def _disk_usage(path: pathlib.Path) -> int:
  return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def prepare(name: str, data_dir: str | None = None, *, overwrite: bool = False,
            download_dir: str | None = None, manual_dir: str | None = None,
            local_files: str | None = None, cache_dir: str | None = None) -> pathlib.Path:
  """Downloads and prepares one TFDS dataset as ArrayRecord, and caches its labels.

  Args:
    name: a TFDS dataset of ``tsm.data.spec.TFDS_DATASETS``.
    data_dir: TFDS data directory (None = ``~/tensorflow_datasets``).
    overwrite: regenerate an existing preparation (e.g. one in TFRecord format).
    download_dir: where raw downloads go (default ``data_dir/downloads``).
    manual_dir: TFDS manual download directory, for builders that need one.
    local_files: folder of already downloaded files (see ``local_mirror``).
    cache_dir: label cache directory (as ``data.cache_dir``).

  Returns:
    The prepared dataset's directory.
  """
  if name not in spec_lib.TFDS_DATASETS:
    raise SystemExit(f"tsm-prepare: {name!r} is not a TFDS dataset of tsm; use one of "
                     f"{', '.join(spec_lib.TFDS_DATASETS)} (the offline sets need no "
                     "preparation).")
  _require_tensorflow()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tsm.data import tfds_sources  # pylint: disable=g-import-not-at-top

  existing = tfds.builder(name, data_dir=data_dir)
  if overwrite and existing.is_prepared():
    # The builder cannot switch an existing preparation's file format in place:
    # remove this version's folder (downloads are kept) and generate it again.
    print(f"tsm-prepare: removing the existing preparation in {existing.data_dir}")
    shutil.rmtree(str(existing.data_dir))
  builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  download_config = tfds.download.DownloadConfig(
      manual_dir=manual_dir,
      download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  start = time.time()
  with local_mirror(tfds.download.DownloadManager, local_files):
    builder.download_and_prepare(download_dir=download_dir,
                                 download_config=download_config,
                                 file_format="array_record")
  where = pathlib.Path(str(builder.data_dir))
  sources = tfds_sources.open_sources(name, data_dir)
  sizes = {}
  for split, source in sources.items():
    labels = tfds_sources.read_labels(source, name, split, cache_dir)
    sizes[split] = len(labels)
  print(f"tsm-prepare: {name} ready in {where} ({_disk_usage(where) / 2**20:.0f} MiB; "
        f"{', '.join(f'{s}: {n}' for s, n in sizes.items())} examples; "
        f"{time.time() - start:.0f} s)")
  return where


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      prog="tsm-prepare",
      description="Download and prepare TFDS datasets as ArrayRecord for tsm "
      f"(needs TensorFlow: {_EXTRA}).")
  parser.add_argument("names", nargs="+", metavar="NAME",
                      help=f"one or more of {', '.join(spec_lib.TFDS_DATASETS)}")
  parser.add_argument("--data_dir", default=None,
                      help="TFDS data directory (default ~/tensorflow_datasets)")
  parser.add_argument("--download_dir", default=None,
                      help="raw downloads (default DATA_DIR/downloads)")
  parser.add_argument("--manual_dir", default=None, help="TFDS manual_dir")
  parser.add_argument("--local_files", default=None,
                      help="folder of already downloaded files, used in place of URLs "
                      "with the same file name (e.g. for cars196)")
  parser.add_argument("--cache_dir", default=None, help="label cache directory")
  parser.add_argument("--overwrite", action="store_true",
                      help="regenerate an existing preparation (e.g. TFRecord)")
  args = parser.parse_args(argv)
  for name in args.names:
    try:
      prepare(name, args.data_dir, overwrite=args.overwrite,
              download_dir=args.download_dir, manual_dir=args.manual_dir,
              local_files=args.local_files, cache_dir=args.cache_dir)
    except Exception as e:  # pylint: disable=broad-except
      first_line = (str(e).strip().splitlines() or [""])[0]
      sys.exit(f"tsm-prepare: {name} failed: {type(e).__name__}: {first_line} "
               "(see notes/data.md for this dataset's download quirks)")


if __name__ == "__main__":
  main()
