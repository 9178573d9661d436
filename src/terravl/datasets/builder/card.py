"""The dataset card of a built caption or instruction set: ``card.json`` (every number) and ``README.md`` (the same
for people): sources with checksums, counts per split and per tag, filter statistics, what was skipped and why,
and the licence notes (OpenStreetMap data is ODbL; the imagery keeps its own licence)."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path

from terravl.errors import OutputError

OSM_LICENCE = ("Captions derived from OpenStreetMap data are a Derivative Database of it: © OpenStreetMap "
               "contributors, available under the Open Database License (ODbL 1.0, "
               "https://opendatacommons.org/licenses/odbl/). Attribute OpenStreetMap wherever you publish this set "
               "or a model trained on it, and share the captions under the ODbL if you publish them.")
OTHER_LICENCE = ("Captions derived from the other vector files listed here carry those files' licences.")
IMAGERY_LICENCE = ("The chips are cut from the rasters listed here and keep those rasters' licence; TerraVL adds "
                   "no rights to them.")


def card_data(kind: str, summary: dict) -> dict:
    """``card.json``'s content: the build summary with its kind, the time and the TerraVL version."""
    from terravl import __version__

    return {"card": kind, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "terravl": __version__, **summary}


def write_json(path: Path, data: object) -> None:
    tmp = path.with_name(path.name + ".part")
    try:
        tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False, default=str), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(path, f"cannot write ({exc.strerror or exc})") from None


def write_card(out: Path, result, rules) -> dict:
    """Write the card of a caption build (:class:`~terravl.datasets.builder.captions.CaptionBuild`)."""
    summary = result.to_dict()
    osm = any(v["format"].startswith("OpenStreetMap") for v in summary["vectors"])
    other = any(not v["format"].startswith("OpenStreetMap") for v in summary["vectors"])
    summary["whitelist_sha256"] = hashlib.sha256(Path(rules.source).read_bytes()).hexdigest()
    summary["licence"] = [text for flag, text in ((osm, OSM_LICENCE), (other, OTHER_LICENCE), (True,
                                                                                                 IMAGERY_LICENCE))
                          if flag]
    data = card_data("terravl-captions", summary)
    write_json(out / "card.json", data)
    _write_text(out / "README.md", _caption_markdown(data))
    return data


def _write_text(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise OutputError(path, f"cannot write ({exc.strerror or exc})") from None


def _caption_markdown(d: dict) -> str:
    p = d["parameters"]
    lines = [f"# Caption set built by TerraVL ({d['created']})", "",
             f"{d['images']} image chips ({p['tile_size']} px), {d['captions']} captions, from "
             f"{len(d['rasters'])} raster(s) and {len(d['vectors'])} vector file(s). Built with "
             "`terravl datasets build captions`: tags visible from above (the whitelist, "
             f"`{Path(p['whitelist']).name}`, sha256 `{d['whitelist_sha256'][:12]}…`), each weighed by the share of "
             f"the tile it covers; objects under {p['min_coverage']} are left out.", "",
             "Files: `captions.json` (Karpathy caption JSON: `terravl train clip --data` / `terravl train caption "
             "--data` read it as it is), `images/` (the chips), `tiles.geojson` (each chip's footprint, WGS84), "
             "`card.json` (every number below).", "", "## Splits", "",
             "| split | images |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in d["splits"].items()]
    lines += ["", "## Sources", "", "| file | kind | CRS | sha256 | notes |", "|---|---|---|---|---|"]
    for r in d["rasters"]:
        lines.append(f"| {r['path']} | raster {r['width']}×{r['height']} | {r['crs']} | `{r['sha256'][:16]}…` | "
                     f"{r['tiles']} tiles |")
    for v in d["vectors"]:
        note = (f"{v.get('features_read', 0)} features read, {v.get('whitelisted', 0)} whitelisted, "
                f"{v.get('used', 0)} inside a raster")
        if v.get("reprojected_to"):
            note += f"; reprojected to {', '.join(v['reprojected_to'])}"
        lines.append(f"| {v['path']} | {v['format']} | {v['crs']} | `{v['sha256'][:16]}…` | {note} |")
    lines += ["", "## Objects (tiles naming each)", "", "| object | tiles | features | main object of |",
              "|---|---|---|---|"]
    lines += [f"| {k} | {t['tiles']} | {t['features']} | {t['main_object']} |" for k, t in d["tags"].items()]
    lines += ["", "## Skipped", "", f"{d['tiles_seen']} tiles seen.", "", "| what | reason | count |",
              "|---|---|---|"]
    lines += [f"| tiles | {k} | {v} |" for k, v in d["skipped_tiles"].items()]
    for v in d["vectors"]:
        lines += [f"| features of {Path(v['path']).name} | {k} | {n} |" for k, n in v.get("skipped", {}).items()]
        if v.get("note"):
            lines.append(f"| features of {Path(v['path']).name} | note: {v['note']} | |")
        if v.get("repaired"):
            lines.append(f"| features of {Path(v['path']).name} | invalid geometry, repaired (kept) | "
                         f"{v['repaired']} |")
    if d.get("filter"):
        f = d["filter"]
        lines += ["", "## Image–text filter", "",
                  f"Model `{f['model']}`, min score {f['min_score']}: {f['captions_dropped']} of "
                  f"{f['captions_scored']} captions and {f['tiles_dropped']} of {f['tiles_scored']} tiles dropped. "
                  f"Score quantiles: {f['score_quantiles']}."]
    if d["problems"]:
        lines += ["", "## Problems", ""] + [f"- `{p['path']}`: {p['error']}" for p in d["problems"]]
    lines += ["", "## Licence", ""] + [f"- {t}" for t in d["licence"]] + [""]
    return "\n".join(lines)
