"""Pieces both studies' runners share."""

from __future__ import annotations

from typing import Any

CACHE_OPTIONS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
                 "jax_persistent_cache_min_entry_size_bytes")


def use_compilation_cache(directory: str | None) -> dict[str, Any]:
  """Points JAX's persistent compilation cache at ``directory``, caching every program.

  Args:
    directory: the cache directory; None or ``""`` leaves JAX's settings alone.

  Returns:
    The previous values of :data:`CACHE_OPTIONS` (to restore them).
  """
  import jax  # pylint: disable=import-outside-toplevel
  saved = {name: getattr(jax.config, name) for name in CACHE_OPTIONS}
  if directory:
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return saved
