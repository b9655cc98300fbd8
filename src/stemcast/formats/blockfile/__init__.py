"""NanoMegas ASTAR blockfile (``.blo``): header spec, reader and writer."""
