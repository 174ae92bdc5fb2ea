"""What ``prepare`` reports about the release it read: prepare.json's ``release`` and the summary lines."""

from __future__ import annotations

from typing import Any

from synthseg.data.sources.releases import BratsConvention


def release_record(
    convention: BratsConvention, recognised: str, results: list[Any], cavity: str
) -> dict[str, Any]:
    """prepare.json's ``release``: what was recognised and decided, and the release's quirks met.

    Args:
        convention: the convention the cases were read with.
        recognised: the line :func:`resolve_convention` gave.
        results: the processed cases (objects with ``case`` and ``notes``).
        cavity: the ``cavity`` setting.
    """
    voxels = {r.case: int(r.notes.get("cavity_voxels", 0)) for r in results}
    with_cavity = sorted(c for c, n in voxels.items() if n)
    preset = convention.name
    if preset == "brats2023/2024":
        preset = "brats2024" if with_cavity else "brats2023"
    record: dict[str, Any] = {"recognised": recognised, "preset": preset}
    if convention.cavity_values:
        record.update(cavity=cavity, cavity_voxels=sum(voxels.values()), cases_with_cavity=len(with_cavity))
    aliases = {r.case: r.notes["seg_alias"] for r in results if r.notes.get("seg_alias")}
    if aliases:
        record["seg_aliases"] = aliases
    record["rescaled_cases"] = sum(1 for r in results if r.notes.get("intensity_scaling"))
    return record


_CAVITY_WORDS = {
    "csf": "mapped to CSF",
    "background": "mapped to background",
    "drop_slice": "their slices dropped",
    "refuse": "refused",
}


def release_lines(record: dict[str, Any]) -> list[str]:
    """Summary lines about the release: recognised, 2023 or 2024, cavity voxels, aliases, rescaled images."""
    release = record.get("release")
    if not release:
        return []
    lines = [release["recognised"]]
    if str(record.get("convention", {}).get("name")) == "brats2023/2024":
        if release["preset"] == "brats2024":
            lines.append(
                f"BraTS 2024: {release['cases_with_cavity']} annotations hold label 4 (resection cavity)"
            )
        else:
            lines.append("BraTS 2023: no annotation holds label 4")
    cases = record.get("cases", [])
    if release.get("cases_with_cavity"):
        lines.append(
            f"resection cavity: {release['cavity_voxels']} voxels in {release['cases_with_cavity']} cases, "
            f"{_CAVITY_WORDS[release['cavity']]} (per case: cavity_voxels in prepare.json)"
        )
        shown = [c for c in cases if c.get("cavity_voxels")]
        if len(shown) <= 20:
            lines.extend(f"  {c['case']}: {c['cavity_voxels']} cavity voxels" for c in shown)
    for case, name in release.get("seg_aliases", {}).items():
        lines.append(f"  {case}: annotation read from {name} (the release's known misnamed file)")
    for c in cases:
        scaling = c.get("intensity_scaling")
        if scaling:
            lines.append(
                f"  {c['case']}: float image already scaled, rescaled to 1..65535 "
                f"(offset {scaling['offset']:g}, factor {scaling['factor']:g})"
            )
    return lines
