"""TVIPS ``.tvips`` series: header spec, record layout, series, reader and writer."""
