"""The figures xaicxr reports, computed from arrays: classification metrics, templates,
explanation quality."""
