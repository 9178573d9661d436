"""A time series of one place: every consecutive pair through :func:`terravl.tasks.change.change`, in date order, and
the timeline of changed area as JSON and a plot."""

from __future__ import annotations

import re
from pathlib import Path

from terravl.errors import InputError
from terravl.results import ChangeSeries
from terravl.tasks.change_outputs import prepare_folder, write_json

_YEAR = re.compile(r"(?<!\d)((?:19|20)\d\d)(?!\d)")


def series_date(path: str | Path, trusted: bool = True) -> str | None:
    """When a raster was acquired: its metadata or a date in its name (``raster_info().acquired``), else a bare
    year in its name (``1985.tif``), as ``YYYY``."""
    from terravl.io import raster_info

    try:
        acquired = raster_info(path, trusted=trusted).acquired
    except InputError:
        acquired = None  # unreadable: its pairs report why, the rest of the series goes on
    if acquired:
        return acquired
    match = _YEAR.search(Path(path).name)
    return match[1] if match else None


def order_by_date(rasters: list, trusted: bool = True) -> tuple[list[tuple[str, str | None]], list[str]]:
    """The rasters sorted by acquisition date, and warnings. Without a date for every one, the given order is
    kept (and said): guessing would put pairs in the wrong direction."""
    dated = [(str(r), series_date(r, trusted)) for r in rasters]
    if all(d for _, d in dated):
        return sorted(dated, key=lambda item: item[1]), []
    missing = ", ".join(p for p, d in dated if not d)
    return dated, [f"no acquisition date in the metadata or name of {missing}: pairs follow the order given"]


def change_series(rasters: list, out: str | Path | None = None, progress: bool | None = None,
                  **options) -> ChangeSeries:
    """Change between every consecutive pair of ``rasters`` (ordered by acquisition date), with ``options`` as for
    :func:`~terravl.tasks.change.change`. With ``out``: one folder per pair (``01_<a>__<b>/``), ``timeline.json``
    and ``timeline.png`` (changed area per interval). A pair that fails is reported in its entry and the series
    goes on."""
    from terravl.tasks.change import change

    if len(rasters) < 2:
        raise InputError("rasters", f"a series needs at least two rasters, got {len(rasters)}")
    ordered, warnings = order_by_date(rasters, options.get("trusted", True))
    folder = prepare_folder(Path(out)) if out is not None else None
    pairs, timeline = [], []
    for i, ((a, da), (b, db)) in enumerate(zip(ordered, ordered[1:]), start=1):
        sub = folder / f"{i:02d}_{Path(a).stem}__{Path(b).stem}" if folder is not None else None
        try:
            result = change(a, b, sub, progress=progress, **options)
        except InputError as exc:
            pairs.append({"before": a, "after": b, "error": exc.message})
            timeline.append({"before": a, "after": b, "before_date": da, "after_date": db, "error": exc.message})
            continue
        pairs.append(result.to_dict())
        timeline.append({"before": a, "after": b, "before_date": da, "after_date": db,
                         "changed_fraction": result.changed_fraction, "changed_area_m2": result.changed_area_m2,
                         "changed_pixels": result.changed_pixels,
                         "region_count": result.region_count, "caption": result.caption})
        warnings.extend(f"{Path(a).name} → {Path(b).name}: {w}" for w in result.warnings)
    outputs = None
    if folder is not None:
        outputs = {"timeline": str(write_json(folder / "timeline.json", {"timeline": timeline})),
                   "plot": str(plot_timeline(timeline, folder / "timeline.png"))}
    return ChangeSeries(rasters=[{"path": p, "date": d} for p, d in ordered], pairs=pairs, timeline=timeline,
                        outputs=outputs, warnings=warnings)


def plot_timeline(timeline: list[dict], path: Path) -> Path:
    """Changed share of the scene per interval (bars at each interval's end date), with the area when known."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt

    labels = [f"{e['before_date'] or '?'}→{e['after_date'] or '?'}" for e in timeline]
    values = [100 * e.get("changed_fraction", 0.0) for e in timeline]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(labels) + 1.5), 3.2), dpi=110)
    try:
        bars = ax.bar(range(len(values)), values, color="#c0392b")
        for bar, entry in zip(bars, timeline):
            area = entry.get("changed_area_m2")
            text = "error" if "error" in entry else (f"{area / 1e6:.2f} km²" if area else "")
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                        fontsize=7)
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("changed (% of scene)")
        ax.set_title("Change between consecutive dates", fontsize=9)
        fig.tight_layout()
        part = path.with_name(path.name + ".part")
        fig.savefig(part, format="png")
        part.replace(path)
    finally:
        plt.close(fig)
    return path
