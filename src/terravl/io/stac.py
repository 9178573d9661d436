"""STAC catalogs as index sources: ``terravl index build catalog.json`` indexes the imagery a catalog describes.

A local STAC catalog, collection, ItemCollection or single item (JSON) is walked with ``pystac``. For each item,
the raster shown as RGB is:

1. its visual asset: key or role ``visual`` or ``rgb``, or else an asset whose ``eo:bands`` (STAC 1.1: ``bands``
   with ``eo:common_name``) include ``red``, ``green`` and ``blue`` — read with those band positions;
2. or else three single-band assets chosen by their ``eo:bands`` common names red, green and blue. They are
   stacked by a small GDAL VRT (an XML file naming the three files) written beside the index, so every reader —
   tiling, the footprint, reopening a search hit — sees one ordinary 3-band raster.

The item's ``datetime`` (or ``start_datetime``) is the acquisition date; the footprint comes from the raster's
georeference, or from the item's geometry when the raster has none. Relative asset hrefs are resolved against the
item's own file; ``s3://`` hrefs are read from object storage (:mod:`terravl.io.remote`). Walking never stops at a
bad item: a catalog that is not JSON, a link to a missing item, an item with no usable asset each become a
:class:`~terravl.results.Problem` naming the file (``catalog.json#item-id``), and the rest goes on.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from xml.sax.saxutils import escape

from terravl.errors import InputError, OutputError, RasterReadError
from terravl.io.formats import describe_os_error
from terravl.io.remote import gdal_path, is_remote, to_url
from terravl.paths import missing_reason
from terravl.results import Problem

RGB = ("red", "green", "blue")
VISUAL_NAMES = ("visual", "rgb")
"""Asset keys and roles that name an item's true-colour image."""
SKIPPED_ROLES = {"thumbnail", "overview", "metadata"}
"""Roles of assets that are never indexed (previews and sidecars), even when keyed ``visual``."""


@dataclass(frozen=True)
class StacAsset:
    """One raster to index from a STAC item: ``href`` is what to open (a local file, an ``s3://`` URL or a VRT
    stacking band files), ``bands`` the 1-based bands shown as RGB (None: what the file says), ``label`` names the
    item in problems (``catalog.json#item-id``); ``acquired`` and ``geometry`` come from the item."""

    href: str
    label: str
    asset: str
    bands: tuple[int, int, int] | None
    acquired: str | None
    geometry: dict | None
    bbox: tuple[float, float, float, float] | None

    @property
    def source(self) -> str:
        """The name recorded in an index: the asset's absolute path or ``s3://`` URL (or the VRT's path)."""
        return to_url(self.href) if is_remote(self.href) else str(Path(self.href).resolve())


def is_stac_file(path: object) -> bool:
    """Whether ``path`` is read as a STAC document: a local ``.json`` file (rasters are never JSON)."""
    return isinstance(path, (str, Path)) and not is_remote(path) and str(path).lower().endswith(".json")


def iter_stac(path: str | Path, vrt_dir: str | Path) -> Iterator[StacAsset | Problem]:
    """Every item reachable from the STAC document at ``path`` as a :class:`StacAsset`, or a :class:`Problem`
    naming what could not be used. VRTs for band assets are written into ``vrt_dir`` (created when needed)."""
    import pystac

    name = str(path)
    try:
        data = json.loads(Path(path).read_bytes())
    except OSError as exc:
        yield Problem(name, missing_reason(path) if not Path(path).is_file() else describe_os_error(exc, path))
        return
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        yield Problem(name, f"not a valid STAC JSON file ({exc})")
        return
    kind = data.get("type") if isinstance(data, dict) else None
    href = os.path.abspath(path)
    try:
        if kind == "FeatureCollection":
            collection = pystac.ItemCollection.from_dict(data, preserve_dict=False)
            for item in collection.items:
                yield from _item_assets(item, f"{name}#{item.id}", os.path.dirname(href), vrt_dir)
            return
        stac = pystac.read_dict(data, href=href)
    except Exception as exc:  # noqa: BLE001 - pystac raises many types for invalid documents
        yield Problem(name, f"not a valid STAC document ({_first_line(exc)})")
        return
    if isinstance(stac, pystac.Item):
        yield from _item_assets(stac, f"{name}#{stac.id}", os.path.dirname(href), vrt_dir)
    elif isinstance(stac, pystac.Catalog):  # a Collection is a Catalog
        yield from _walk(stac, name, vrt_dir, {href})
    else:
        yield Problem(name, f"not a STAC catalog, collection, item collection or item (type {kind!r})")


def _walk(catalog, name: str, vrt_dir, seen: set[str]) -> Iterator[StacAsset | Problem]:
    """Items of ``catalog`` and of its children, link by link: a link that cannot be read is one problem."""
    import pystac

    for link in catalog.links:
        if link.rel not in ("item", "child"):
            continue
        target = link.get_absolute_href() or str(link.target)
        if target in seen:
            continue
        seen.add(target)
        where = target
        try:
            obj = link.resolve_stac_object(root=catalog.get_root()).target
        except Exception as exc:  # noqa: BLE001 - a missing or malformed linked file: report it, go on
            what = "item" if link.rel == "item" else "child catalog"
            reason = missing_reason(target) if target and not os.path.exists(target) else _first_line(exc)
            yield Problem(where, f"STAC {what} linked from {name} cannot be read ({reason})")
            continue
        if isinstance(obj, pystac.Item):
            yield from _item_assets(obj, f"{where}#{obj.id}", os.path.dirname(target), vrt_dir)
        elif isinstance(obj, pystac.Catalog):
            yield from _walk(obj, where, vrt_dir, seen)


def _item_assets(item, label: str, base: str, vrt_dir) -> Iterator[StacAsset | Problem]:
    """The asset to index for one item (see the module's docstring), or a problem saying why there is none."""
    acquired = _date(item)
    geometry = item.geometry if isinstance(item.geometry, dict) else None
    bbox = tuple(float(v) for v in item.bbox[:4]) if item.bbox and len(item.bbox) == 4 else None
    assets = {key: asset for key, asset in item.assets.items() if not SKIPPED_ROLES & set(asset.roles or ())}
    chosen = _visual(assets)
    try:
        if chosen is not None:
            key, bands = chosen
            href = _href(assets[key], base)
            yield StacAsset(href, label, key, bands, acquired, geometry, bbox)
            return
        by_colour = _band_assets(assets)
        if by_colour is None:
            yield Problem(label, "no visual/RGB asset and no red, green and blue band assets (by eo:bands common "
                                 f"names) among its assets ({', '.join(item.assets) or 'none'})")
            return
        sources = [(_href(assets[key], base), band) for key, band in by_colour]
        vrt = write_vrt(sources, Path(vrt_dir) / f"{_safe(item.id)}-{_digest(label)}.vrt")
        yield StacAsset(str(vrt), label, "+".join(k for k, _ in by_colour), (1, 2, 3), acquired, geometry, bbox)
    except InputError as exc:
        yield Problem(label, f"{exc.source}: {exc.message}")


def _visual(assets: dict) -> tuple[str, tuple[int, int, int] | None] | None:
    """(key, RGB band positions or None) of the item's true-colour asset, if it has one."""
    for key, asset in assets.items():
        if key.lower() in VISUAL_NAMES:
            return key, _rgb_positions(asset)
    for key, asset in assets.items():
        if {r.lower() for r in asset.roles or ()} & set(VISUAL_NAMES):
            return key, _rgb_positions(asset)
    for key, asset in assets.items():
        positions = _rgb_positions(asset)
        if positions is not None:
            return key, positions
    return None


def _band_assets(assets: dict) -> list[tuple[str, int]] | None:
    """[(key, band)] of single-band assets whose common names are red, green and blue, or None."""
    found: dict[str, tuple[str, int]] = {}
    for key, asset in assets.items():
        names = _common_names(asset)
        if len(names) == 1 and names[0] in RGB:
            found.setdefault(names[0], (key, 1))
    if all(c in found for c in RGB):
        return [found[c] for c in RGB]
    return None


def _common_names(asset) -> list[str | None]:
    """The common names of an asset's bands: ``eo:bands`` (STAC 1.0) or ``bands`` with ``eo:common_name`` (1.1)."""
    bands = asset.extra_fields.get("eo:bands") or asset.extra_fields.get("bands") or []
    out: list[str | None] = []
    for band in bands if isinstance(bands, list) else []:
        name = band.get("common_name") or band.get("eo:common_name") if isinstance(band, dict) else None
        out.append(str(name).lower() if name else None)
    return out


def _rgb_positions(asset) -> tuple[int, int, int] | None:
    names = _common_names(asset)
    if all(c in names for c in RGB):
        return tuple(names.index(c) + 1 for c in RGB)  # type: ignore[return-value]
    return None


def _href(asset, base: str) -> str:
    """The asset's href as a path or ``s3://`` URL to open: relative hrefs resolved against the item's file."""
    href = asset.href
    if is_remote(href):
        return to_url(href)
    if href.startswith("file://"):
        href = href[len("file://"):]
    elif "://" in href:
        raise InputError(href, "only local files and s3:// URLs are read; this asset's href is another URL scheme")
    return href if os.path.isabs(href) else os.path.normpath(os.path.join(base, href))


def _date(item) -> str | None:
    """YYYY-MM-DD of the item's ``datetime``, else of its ``start_datetime``."""
    when = item.datetime or item.common_metadata.start_datetime
    return when.date().isoformat() if when else None


_GDAL_TYPES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
               "int32": "Int32", "uint64": "UInt64", "int64": "Int64", "float32": "Float32", "float64": "Float64"}


def write_vrt(sources: list[tuple[str, int]], out: Path) -> Path:
    """Write a GDAL VRT showing ``sources`` ((file or ``s3://`` URL, band) for red, green, blue) as one 3-band
    raster at ``out``; the files must share one grid (size, transform and CRS), as an item's bands at one
    resolution do. A file that cannot be opened, or one on another grid, is a :class:`RasterReadError` naming it."""
    import rasterio
    from rasterio.errors import RasterioError

    from terravl.io.gdalenv import gdal_env
    from terravl.io.remote import read_error

    headers = []
    for href, band in sources:
        remote = is_remote(href)
        if not remote and not os.path.isfile(href):
            raise RasterReadError(href, missing_reason(href))
        try:
            with gdal_env(remote=remote), rasterio.open(gdal_path(href) if remote else href) as ds:
                if not 1 <= band <= ds.count:
                    raise RasterReadError(href, f"has {ds.count} band(s); band {band} was asked for")
                headers.append((ds.width, ds.height, ds.transform, ds.crs, ds.dtypes[band - 1], ds.nodata))
        except (RasterioError, OSError) as exc:
            raise (read_error(href, exc) if remote else
                   RasterReadError(href, f"not a readable raster ({_first_line(exc)})")) from exc
    width, height, transform, crs, _, _ = headers[0]
    for (href, _), (w, h, t, c, _, _) in zip(sources[1:], headers[1:]):
        if (w, h) != (width, height) or not t.almost_equals(transform) or c != crs:
            raise RasterReadError(href, f"is on another grid ({w} × {h}) than {sources[0][0]} ({width} × {height}); "
                                        "band assets at different resolutions are not stacked")
    dtypes = {d for *_, d, _ in headers}
    dtype = headers[0][4] if len(dtypes) == 1 else "float32"
    lines = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">']
    if crs is not None:
        lines.append(f"  <SRS>{escape(crs.to_wkt())}</SRS>")
        lines.append("  <GeoTransform>" + ", ".join(repr(float(v)) for v in transform.to_gdal()) + "</GeoTransform>")
    for i, ((href, band), header, colour) in enumerate(zip(sources, headers, ("Red", "Green", "Blue")), start=1):
        nodata = header[5]
        filename = gdal_path(href) if is_remote(href) else os.path.abspath(href)
        lines += [f'  <VRTRasterBand dataType="{_GDAL_TYPES.get(dtype, "Float32")}" band="{i}">',
                  f"    <ColorInterp>{colour}</ColorInterp>"]
        if nodata is not None:
            lines.append(f"    <NoDataValue>{nodata!r}</NoDataValue>")
        lines += ["    <SimpleSource>",
                  f'      <SourceFilename relativeToVRT="0">{escape(filename)}</SourceFilename>',
                  f"      <SourceBand>{band}</SourceBand>",
                  f'      <SrcRect xOff="0" yOff="0" xSize="{width}" ySize="{height}"/>',
                  f'      <DstRect xOff="0" yOff="0" xSize="{width}" ySize="{height}"/>',
                  "    </SimpleSource>", "  </VRTRasterBand>"]
    lines.append("</VRTDataset>")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".part")
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        tmp.replace(out)
    except OSError as exc:
        raise OutputError(out, f"cannot write the band-stacking VRT ({describe_os_error(exc, out, 'write')})"
                          ) from None
    return out


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:80] or "item"


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "backslashreplace")).hexdigest()[:10]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else exc.__class__.__name__
