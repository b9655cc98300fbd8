"""EMD (HDF5), NCEM and Velox flavours: reader and writer."""
