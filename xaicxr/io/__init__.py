"""What xaicxr reads and writes: image decoding, the run's HDF5 files, model files, figures."""
