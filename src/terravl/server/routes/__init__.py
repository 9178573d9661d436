"""The API by area: :mod:`.archive` (indexes, search, tiles), :mod:`.understand` (classify, caption, ask,
localize, heat maps), :mod:`.operations` (probes) and :mod:`.page` (the web map, docs and their assets)."""
