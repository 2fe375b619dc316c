"""Geometry, free of torch: shapely helpers, masks to polygons, ground areas.

- :mod:`~rooftrace.geometry.shapes`: ``clean_footprint`` (bounded repair), ``pixel_to_map`` / ``map_to_pixel``.
- :mod:`~rooftrace.geometry.polygons`: ``mask_to_footprints``, ``instances_to_polygons`` (traced on pixel edges).
- :mod:`~rooftrace.geometry.areas`: ``area_m2`` in any CRS.
"""
