"""Stream the whitelisted features of vector files: OpenStreetMap extracts through pyosmium, everything else
(GeoJSON, GeoPackage, Shapefile, FlatGeobuf, …) through pyogrio (GDAL/OGR).

Both readers yield one :class:`Feature` at a time, so memory does not grow with the size of the file:

* OSM (``.osm``, ``.osm.pbf``, ``.osm.bz2``, ``.osm.gz``, ``.pbf``): pyosmium's ``FileProcessor`` passes every
  object through a key filter built from the whitelist before Python sees it, assembles multipolygons into areas
  (two passes over the file) and keeps node locations in memory for extracts up to :data:`DISK_INDEX_BYTES`, in a
  sparse file on disk beyond (constant memory for a country extract).
* OGR: read in chunks of :data:`CHUNK` features; files over :data:`DISK_INDEX_BYTES` are read with a bounding-box
  filter so that only features near the rasters are decoded.

Every feature that is not used is counted with its reason in :class:`VectorStats` (no whitelisted tag, a tag
whose geometry is not drawn — a building mapped as a point —, an empty or unrepairable geometry, a way whose
nodes are not in the extract); invalid geometries (self-intersections…) are repaired with ``make_valid`` and
counted, and the first few of every reason are kept as examples for the dataset card.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import shapely
from pyproj import CRS

from terravl.datasets.builder.tags import TagRule, Whitelist
from terravl.errors import InputError

OSM_SUFFIXES = (".osm", ".osm.pbf", ".pbf", ".osm.bz2", ".osm.gz", ".o5m")
DISK_INDEX_BYTES = 256 * 1024 * 1024
"""Above this size an OSM extract keeps its node locations on disk and an OGR file is read with a bbox filter."""
CHUNK = 10_000
"""Features decoded at once from an OGR layer."""
MAX_EXAMPLES = 5

WGS84 = CRS.from_epsg(4326)


@dataclass
class Feature:
    """A whitelisted feature: its geometry (in the source's CRS), the rule that names it, its geometry kind."""

    geometry: object
    rule: TagRule
    kind: str
    ident: str


@dataclass
class VectorStats:
    """What one vector file gave: features read, used, repaired, and skipped per reason (with examples)."""

    path: str
    format: str = ""
    crs: str | None = None
    layers: list[str] = field(default_factory=list)
    features_read: int = 0
    whitelisted: int = 0
    repaired: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    note: str | None = None

    def skip(self, reason: str, ident: str) -> None:
        self.skipped[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < MAX_EXAMPLES:
            shown.append(ident)

    def to_dict(self) -> dict:
        return {"path": self.path, "format": self.format, "crs": self.crs, "layers": self.layers,
                "features_read": self.features_read, "whitelisted": self.whitelisted, "repaired": self.repaired,
                "skipped": dict(sorted(self.skipped.items())), "examples": self.examples, "note": self.note}


def is_osm(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in OSM_SUFFIXES)


def geometry_kind(geom) -> str | None:
    """area, line or point from a shapely geometry type (None for an empty or mixed collection)."""
    kind = shapely.get_type_id(geom)
    if kind in (0, 4):
        return "point"
    if kind in (1, 2, 5):
        return "line"
    if kind in (3, 6):
        return "area"
    return None


def repair(geom, kind: str):
    """A valid geometry of ``kind``'s dimension from ``geom`` (``make_valid`` keeps the parts of that dimension),
    or None when nothing of it is left."""
    fixed = shapely.make_valid(geom)
    dim = {"point": 0, "line": 1, "area": 2}[kind]
    parts = [p for p in shapely.get_parts(fixed) if shapely.get_dimensions(p) == dim and not p.is_empty]
    if not parts:
        return None
    merged = shapely.union_all(parts) if len(parts) > 1 else parts[0]
    return merged if not merged.is_empty else None


class VectorSource:
    """One vector file, opened lazily; ``crs`` is its CRS (None when it has none), ``stats`` what reading gave."""

    def __init__(self, path: str | Path, whitelist: Whitelist, assume_crs: str | None = None):
        self.path = Path(path)
        self.whitelist = whitelist
        self.stats = VectorStats(str(path))
        if not self.path.is_file():
            raise InputError(self.path, "no such vector file" if not self.path.exists() else "not a file")
        self.osm = is_osm(self.path)
        self.assumed = False
        self.assemble_areas = True
        """False after an unsorted OSM file failed area assembly: closed ways are read as polygons on their own
        and multipolygon relations are skipped (counted)."""
        if self.osm:
            self.stats.format = "OpenStreetMap (pyosmium)"
            self.stats.note = ("objects with none of the whitelist's keys are dropped by pyosmium unread, so "
                               "features_read and 'no whitelisted tag' count only objects with a whitelisted key")
            self.crs: CRS | None = WGS84
            self.layers: list[str] = []
        else:
            self._open_ogr(assume_crs)
        self.stats.crs = _crs_name(self.crs)

    def _open_ogr(self, assume_crs: str | None) -> None:
        import pyogrio

        try:
            self.layers = [str(name) for name, _ in pyogrio.list_layers(self.path)]
            info = pyogrio.read_info(self.path, layer=self.layers[0] if self.layers else None)
        except Exception as exc:  # noqa: BLE001 - GDAL's errors are many; all mean "cannot read"
            raise InputError(self.path, f"not a vector file GDAL can read ({_first_line(exc)})") from None
        self.stats.format = f"{info.get('driver', '?')} (pyogrio)"
        self.stats.layers = list(self.layers)
        crs = info.get("crs")
        if crs:
            self.crs = CRS.from_user_input(crs)
        elif assume_crs:
            self.crs = CRS.from_user_input(assume_crs)
            self.assumed = True
        else:
            self.crs = None

    # -- features ---------------------------------------------------------------------------------------
    def restart_unsorted(self) -> None:
        """Read again without area assembly (an unsorted OSM file); the counts start over."""
        self.assemble_areas = False
        self.stats = VectorStats(self.stats.path, self.stats.format, self.stats.crs, self.stats.layers,
                                 note=self.stats.note)

    def features(self, bbox: tuple[float, float, float, float] | None = None) -> Iterator[Feature]:
        """Whitelisted features, one at a time. ``bbox`` (in the source's CRS) lets large OGR files skip what is
        far from every raster."""
        if self.osm:
            yield from self._osm_features()
        else:
            for layer in self.layers or [None]:
                yield from self._ogr_features(layer, bbox)

    def _accept(self, geom, tags: dict[str, str], ident: str) -> Feature | None:
        """The feature ``geom`` with ``tags`` is, or None (counted under its reason)."""
        self.stats.features_read += 1
        if geom is None or shapely.is_empty(geom):
            if self.whitelist.any_match(tags):
                self.stats.skip("empty geometry", ident)
            else:
                self.stats.skip("no whitelisted tag", ident)
            return None
        kind = geometry_kind(geom)
        rule = self.whitelist.rule_for(tags, kind) if kind else None
        if rule is None:
            reason = "whitelisted tag on a geometry it is not drawn as" if self.whitelist.any_match(tags) else \
                "no whitelisted tag"
            self.stats.skip(reason, ident)
            return None
        if not shapely.is_valid(geom):
            why = shapely.is_valid_reason(geom)
            geom = repair(geom, kind)
            if geom is None:
                self.stats.skip("invalid geometry that could not be repaired", f"{ident} ({why})")
                return None
            self.stats.repaired += 1
            examples = self.stats.examples.setdefault("repaired invalid geometry", [])
            if len(examples) < MAX_EXAMPLES:
                examples.append(f"{ident} ({why})")
        self.stats.whitelisted += 1
        return Feature(geom, rule, kind, ident)

    def _ogr_features(self, layer: str | None, bbox) -> Iterator[Feature]:
        import pyogrio.raw

        use_bbox = bbox if bbox is not None and self.path.stat().st_size > DISK_INDEX_BYTES else None
        skip = 0
        name = f"{self.path.name}" + (f":{layer}" if layer and len(self.layers) > 1 else "")
        while True:
            try:
                meta, _, geoms, fields = pyogrio.raw.read(self.path, layer=layer, skip_features=skip,
                                                          max_features=CHUNK, bbox=use_bbox, force_2d=True)
            except Exception as exc:  # noqa: BLE001
                raise InputError(self.path, f"cannot read layer {layer or 0} ({_first_line(exc)})") from None
            count = len(geoms) if geoms is not None else 0
            if not count:
                return
            columns = list(meta.get("fields", []))
            shapes = _from_wkb(geoms)
            for i in range(count):
                tags = _tags({col: fields[j][i] for j, col in enumerate(columns)})
                feature = self._accept(shapes[i], tags, f"{name}#feature {skip + i}")
                if feature is not None:
                    yield feature
            if count < CHUNK:
                return
            skip += count

    def _osm_features(self) -> Iterator[Feature]:
        import osmium

        storage, tmp = "flex_mem", None
        if self.path.stat().st_size > DISK_INDEX_BYTES:
            tmp = tempfile.TemporaryDirectory(prefix="terravl-osm-")
            storage = f"sparse_file_array,{os.path.join(tmp.name, 'nodes.idx')}"
        factory = osmium.geom.WKBFactory()
        try:
            processor = osmium.FileProcessor(str(self.path)).with_locations(storage)
            if self.assemble_areas:
                processor = processor.with_areas()
            processor = processor.with_filter(osmium.filter.KeyFilter(*self.whitelist.keys))
            for obj in processor:
                tags = {t.k: t.v for t in obj.tags}
                if obj.is_node():
                    ident, make = f"node/{obj.id}", factory.create_point
                elif obj.is_way():
                    closed = obj.is_closed()
                    if closed and self.whitelist.rule_for(tags, "line") is None:
                        if self.assemble_areas:
                            continue  # a closed way that is an area comes again, assembled, as an area
                        ident, make = f"way/{obj.id}", _ring_maker(factory)
                    else:
                        ident, make = f"way/{obj.id}", factory.create_linestring
                elif obj.is_area():
                    if self.whitelist.rule_for(tags, "area") is None:
                        continue  # a closed way kept as a line (a roundabout) or an untagged ring
                    ident = f"{'way' if obj.from_way() else 'relation'}/{obj.orig_id()}"
                    make = factory.create_multipolygon
                elif obj.is_relation() and not self.assemble_areas and tags.get("type") == "multipolygon":
                    self.stats.features_read += 1
                    self.stats.skip("multipolygon relation in an unsorted file", f"relation/{obj.id}")
                    continue
                else:
                    continue  # relations: multipolygons arrive as areas
                try:
                    geom = shapely.from_wkb(make(obj))  # hex WKB
                except (osmium.InvalidLocationError, RuntimeError) as exc:
                    self.stats.features_read += 1
                    self.stats.skip("nodes missing from the extract" if isinstance(exc, osmium.InvalidLocationError)
                                    else "geometry could not be built", ident)
                    continue
                feature = self._accept(geom, tags, f"{self.path.name}#{ident}")
                if feature is not None:
                    yield feature
        except RuntimeError as exc:
            if "out of order" in str(exc) and self.assemble_areas:
                raise UnsortedOsmError(self.path, f"not sorted by type and id ({_first_line(exc)})") from None
            raise InputError(self.path, f"cannot read as OpenStreetMap data ({_first_line(exc)})") from None
        finally:
            if tmp is not None:
                tmp.cleanup()


def _ring_maker(factory):
    """For unsorted files (no area assembly): a closed way as a polygon, from its linestring."""
    def make(way):
        line = shapely.from_wkb(factory.create_linestring(way))
        return shapely.to_wkb(shapely.Polygon(shapely.get_coordinates(line)))
    return make


class UnsortedOsmError(InputError):
    """An OSM file whose objects are not sorted by type and id: multipolygons cannot be assembled from it."""


def _from_wkb(geoms) -> list:
    """Geometries from WKB, one bad blob (None) not spoiling the rest."""
    try:
        return list(shapely.from_wkb(geoms, on_invalid="fix"))
    except Exception:  # noqa: BLE001
        out = []
        for g in geoms:
            try:
                out.append(shapely.from_wkb(g, on_invalid="fix") if g is not None else None)
            except Exception:  # noqa: BLE001
                out.append(None)
        return out


def _tags(row: dict) -> dict[str, str]:
    """Attribute values as OSM-style tags (strings); a ``tags`` column holding a JSON object (Overpass exports) is
    merged in."""
    tags: dict[str, str] = {}
    for key, value in row.items():
        if value is None or (isinstance(value, float) and value != value):
            continue
        if key in ("tags", "other_tags") and isinstance(value, str) and value.startswith("{"):
            try:
                nested = json.loads(value)
            except ValueError:
                nested = None
            if isinstance(nested, dict):
                tags.update({str(k): str(v) for k, v in nested.items() if v is not None})
                continue
        text = str(value).strip()
        if text:
            tags[str(key)] = text
    return tags


def _crs_name(crs: CRS | None) -> str | None:
    if crs is None:
        return None
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.name


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
