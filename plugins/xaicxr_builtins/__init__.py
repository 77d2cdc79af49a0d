"""The built-in plugins of xaicxr, registered through the ``xaicxr`` entry-point group exactly
like a third-party package (see pyproject.toml)."""
