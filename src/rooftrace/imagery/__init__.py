"""Images and rasters, free of torch.

- :mod:`~rooftrace.imagery.read`: ``list_images``, ``read_rgb`` (any tile to uint8 RGB), ``stretch_to_uint8``.
- :mod:`~rooftrace.imagery.raster`: ``Scene`` (a large raster read window by window, bands and stretch).
- :mod:`~rooftrace.imagery.windows`: ``Grid``, ``window_starts``, ``window_keep`` (overlap-and-crop).
- :mod:`~rooftrace.imagery.georef`: ``Georef``, ``locate_image`` (GeoTIFF or web-map tile name), ``pixels_to_map``.
- :mod:`~rooftrace.imagery.resample`: pixel size checks, ``resample_factor``, ``place_tile``, ``resize_image``.
- :mod:`~rooftrace.imagery.normalize`, :mod:`~rooftrace.imagery.png`, :mod:`~rooftrace.imagery.draw` (overlays).
"""
