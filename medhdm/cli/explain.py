"""``medhdm explain``: explain studies (DICOM file or series folder, NIfTI; ``--image`` or ``--manifest``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import options

__all__ = ["add_command", "run"]


def add_command(sub) -> None:
    """``medhdm explain``."""
    ex = sub.add_parser("explain", help="explain studies (DICOM file/series folder, NIfTI) with a classifier")
    images = ex.add_mutually_exclusive_group()
    images.add_argument("--image", action="append", help="DICOM file, DICOM series folder or NIfTI file (repeatable)")
    images.add_argument(
        "--manifest", default=None, help="a data manifest (data_manifests/README.md); its images (not with --image)"
    )
    options.add_method_options(ex)
    options.add_model_options(ex)
    ex.add_argument(
        "--out",
        required=True,
        help="output folder: <case>/<case>_saliency.nii.gz and record.json per case, explanations.csv; "
        "a re-run resumes (skips the cases complete for the same configuration)",
    )
    ex.add_argument(
        "--region",
        default=None,
        help="segmentation models: the target region explained, 'predicted' (the model's own mask for the class, "
        "the default), 'component:K' (its K-th largest connected component) or a mask file (NIfTI) on the image's "
        "grid (one --image); written beside the map as <case>_region.nii.gz, SEG segment 2 with --export seg; "
        "with --slices (a 2D segmenter on a series) each slice is explained for its part of the region",
    )
    ex.add_argument("--export", default=None, help="also export DICOM sources: comma-separated sc,pm,seg,nifti,png")
    options.add_seg_threshold_option(ex)
    options.add_deidentify_options(ex, "the exported DICOM objects")
    ex.add_argument(
        "--overwrite", action="store_true", help="redo the cases a previous run completed with another configuration"
    )
    options.add_engine_options(ex)
    options.finish_command(ex, run)


def _entries(args: argparse.Namespace) -> list[dict]:
    """The cases of ``--image`` and ``--manifest``: id, image and class index each."""
    from ..io.cases import unique_case_ids

    images = [Path(p) for p in args.image or []]
    for path in images:
        if not path.exists():
            raise FileNotFoundError(f"--image: {path}: no such file or folder")
    ids = unique_case_ids(images) if images else []  # manifest images were checked by load_manifest
    entries = [{"id": name, "image": str(path), "class_idx": args.class_idx} for path, name in zip(images, ids)]
    if args.manifest:
        from ..io.manifest import load_manifest

        entries += [
            {"id": e["id"], "image": str(e["image"]), "class_idx": e.get("class_idx", args.class_idx)}
            for e in load_manifest(args.manifest)
        ]
    if not entries:
        raise ValueError("give --image (one or more) or --manifest")
    ids = [e["id"] for e in entries]
    if len(set(ids)) != len(ids):
        raise ValueError(
            "two images would give the same case name: " + ", ".join(sorted({i for i in ids if ids.count(i) > 1}))
        )
    return entries


def _export(args: argparse.Namespace, entries: list[dict]):
    """The formats of ``--export`` and the :class:`~medhdm.export.Deidentification` of the de-identification
    options (or ``None``), checked before any work."""
    formats = options.format_list(args.export)
    if not formats and (args.deidentify or args.deidentify_salt or args.deidentify_salt_file):
        raise ValueError("--deidentify: only with --export (it de-identifies the exported DICOM objects)")
    deidentify = options.deidentification(args)
    if formats:
        from ..export import OverlayStyle, check_export_arguments
        from ..io.reader import is_dicom_path

        check_export_arguments(
            formats, args.out, OverlayStyle(), None, args.seg_threshold, deidentify and deidentify.salt
        )
        not_dicom = [e for e in entries if not is_dicom_path(e["image"])]
        if not_dicom:
            raise ValueError(f"--export: {not_dicom[0]['image']} is not DICOM; DICOM export needs DICOM sources")
    return formats, deidentify


def _region(args: argparse.Namespace, entries: list[dict]) -> str | None:
    """``--region`` checked before any work: a named target, or a mask file for one image."""
    region = args.region
    if region is None or region == "predicted" or region.startswith("component:"):
        if region is not None and region != "predicted":
            k = region.partition(":")[2]
            if not k.isdigit() or int(k) < 1:
                raise ValueError(f"--region: expected 'predicted', 'component:K' (K >= 1) or a mask file, got {region}")
        return region
    if not Path(region).is_file():
        raise FileNotFoundError(f"--region: {region}: no such file")
    if len(entries) != 1:
        raise ValueError(f"--region: a mask file is on one image's grid; give one --image, not {len(entries)}")
    return str(Path(region).resolve())


def run(args: argparse.Namespace) -> None:
    from ..cohort import ExplainRecipe, explain_cohort
    from ..io.outputs import check_output_folder

    entries = _entries(args)
    region = _region(args, entries)
    formats, deidentify = _export(args, entries)
    check_output_folder(args.out, [e["image"] for e in entries])
    options.check_case_folders(args.out, [e["id"] for e in entries])
    steps, method_args = options.method_arguments(args)
    cohort_options = options.engine_options(args)
    recipe, model, spec = options.model_and_spec(args)
    explain = ExplainRecipe(
        recipe,
        spec,
        args.method,
        steps=steps,
        method_args=method_args,
        export=tuple(formats),
        slices=options.slices(args),
        deidentify=deidentify,
        region=region,
        seg_threshold=args.seg_threshold,
    )
    result = explain_cohort(entries, explain, args.out, options=cohort_options, model=model)
    print(
        f"{len(result.done)} cases explained, {len(result.skipped)} already complete; "
        f"maps (one folder per case) and explanations.csv in {Path(args.out)}"
    )
