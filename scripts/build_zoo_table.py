"""Build ``saver_search/data/zoo.csv`` from timm's published results (run from anywhere).

Joins ``results-imagenet.csv`` (top-1 per pretrained tag and resolution) with the published GMACs of
``benchmark-infer-amp-nchw-pt291-cu130-5090.csv`` (on arch name and resolution) and the pretraining
data of ``model_metadata-in1k.csv``; keeps one row per tag (the resolution timm's pretrained cfg
uses by default) and adds a coarse architecture family, a coarse pretraining-data label and
whether the tag is timm's default for its arch, and the published GPU throughput that ``plan`` prices
caching with. Needs timm (for the pretrained cfgs).

    python scripts/build_zoo_table.py [--source ../shared/data/timm-results] [--out saver_search/data/zoo.csv]
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "timm-results"
DEFAULT_OUT = REPO / "saver_search" / "data" / "zoo.csv"
RESULTS = "results-imagenet.csv"
BENCHMARK = "benchmark-infer-amp-nchw-pt291-cu130-5090.csv"
METADATA = "model_metadata-in1k.csv"
COLUMNS = ["name", "arch", "tag", "img_size", "top1", "published_gmacs", "params_m", "family", "pretrain", "is_default_tag",
           "gpu_images_per_s", "gpu_batch_size"]
HEADER = [
    "saver_search model zoo: one row per pretrained timm ImageNet-1k classifier (arch.tag).",
    "top1, img_size, params_m and published_gmacs are figures from timm's results/ folder",
    "(pytorch-image-models, https://github.com/huggingface/pytorch-image-models, Apache-2.0), Aug 2026:",
    f"{RESULTS}, {METADATA} and {BENCHMARK}: its infer_gmacs as published_gmacs,",
    "its infer_samples_per_sec and infer_batch_size as gpu_images_per_s and gpu_batch_size (the forward pass alone",
    "on one RTX 5090 under AMP, NCHW, PyTorch 2.9.1, CUDA 13.0).",
    "family, pretrain and is_default_tag (timm 1.0 pretrained cfgs) are derived by scripts/build_zoo_table.py.",
]

# First match wins; the arch name is matched after dropping a "tf_" / "legacy_" prefix.
FAMILY_RULES: list[tuple[str, str]] = [
    (r"test_", "test"),
    (r"convnextv2", "convnextv2"),
    (r"convnext", "convnext"),
    (r"(gc_)?efficientnetv2", "efficientnetv2"),
    (r"efficientnet", "efficientnet"),
    (r"efficientformerv2", "efficientformerv2"),
    (r"efficientformer", "efficientformer"),
    (r"mobilenetv3", "mobilenetv3"),
    (r"mobilenetv4", "mobilenetv4"),
    (r"mobilenet", "mobilenet"),
    (r"mobilevit", "mobilevit"),
    (r"deit3", "deit3"),
    (r"tiny_vit", "tiny_vit"),
    (r"(vit_|flexivit|naflexvit)", "vit"),
    (r"beit", "beit"),
    (r"swin", "swin"),
    (r"regnet", "regnet"),
    (r"(nf_|nfnet|dm_nfnet|eca_nfnet)", "nfnet"),
    (r"resnetv2", "resnetv2"),
    (r"res2ne", "res2net"),
    (r"(lambda_resnet|halo|botnet|sebotnet|sehalonet|lamhalobotnet|eca_botnext|eca_halonext)", "byoanet"),
    (r"(resnet|resnext|seresnet|seresnext|ecaresnet|eca_resnet|eca_resnext|wide_resnet|skresnet|skresnext"
     r"|gcresnet|gcresnext|bat_resnext|senet)", "resnet"),
    (r"(cs3|csp|darknet)", "cspnet"),
    (r"(ghostnet|repghostnet)", "ghostnet"),
    (r"hgnet", "hgnet"),
    (r"rexnet", "rexnet"),
    (r"fbnet", "fbnet"),
    (r"(poolformer|caformer|convformer)", "metaformer"),
    (r"(maxvit|maxxvit)", "maxvit"),
    (r"coatne", "coatnet"),
    (r"inception_next", "inception_next"),
    (r"(semnasnet|mnasnet)", "mnasnet"),
    (r"densenet", "densenet"),
    (r"ese_vovnet", "vovnet"),
]
FALLBACK_FAMILY = re.compile(r"[a-z]+?(?:v\d+)?(?![a-z])")  # leading letters, with a "v2"-style version

# Pretraining data, checked on the tag's '_'-separated parts in this order: what makes models err
# together is mostly the data they saw before ImageNet-1k fine-tuning.
PRETRAIN_RULES: list[tuple[set[str], str]] = [
    ({"laion2b", "laiona"}, "laion"),
    ({"openai", "clip"}, "clip"),
    ({"webli"}, "webli"),
    ({"m38m", "m30m"}, "m38m"),
    ({"ig1b", "swsl", "wsl", "swag", "seer"}, "ig"),
    ({"yfcc100m"}, "yfcc"),
    ({"jft"}, "jft"),
    ({"in22k", "in21k"}, "in22k"),
    ({"in12k"}, "in12k"),
    ({"ssld"}, "ssld"),
    ({"fcmae"}, "fcmae"),
    ({"mae"}, "mae"),
    ({"mim"}, "mim"),
    ({"dist", "distilled", "teacher"}, "in1k-dist"),
    ({"adv", "ap"}, "in1k-adv"),
]
# model_metadata-in1k.csv labels (per arch, older timm names) for tags that name no extra data.
METADATA_PRETRAIN = {
    "in1k-dist": "in1k-dist", "in1k-adv": "in1k-adv", "in1k-ap": "in1k-adv", "in21k": "in22k",
    "in21k-selfsl": "in22k", "jft300m-ns": "jft", "ig1b-swsl": "ig", "ig1b-wsl": "ig", "yfc-semisl": "yfcc",
}


def family_of(arch: str) -> str:
    """Coarse architecture family of a timm arch name."""
    stem = re.sub(r"^(tf_|legacy_)", "", arch)
    for pattern, family in FAMILY_RULES:
        if re.match(pattern, stem):
            return family
    match = FALLBACK_FAMILY.match(stem)
    return match.group(0) if match else stem


def pretrain_of(arch: str, tag: str, metadata: dict[str, str]) -> str:
    """Coarse pretraining-data label from the tag, then the arch's metadata, else ``in1k``."""
    parts = set(tag.split("_"))
    for keys, label in PRETRAIN_RULES:
        if parts & keys:
            return label
    if "distilled" in arch.split("_"):
        return "in1k-dist"
    return METADATA_PRETRAIN.get(metadata.get(arch, ""), "in1k")


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def build_rows(source: Path) -> list[dict[str, str]]:
    """One output row per pretrained tag of the results table, best top-1 first."""
    from saver_search.compat import import_timm
    from saver_search.zoo.names import split_name

    timm = import_timm()
    results = read_csv(source / RESULTS)
    benchmark = {(row["model"], int(row["infer_img_size"])): row for row in read_csv(source / BENCHMARK)}
    metadata = {row["model"]: row["pretrain"] for row in read_csv(source / METADATA)}

    by_name: dict[str, list[dict[str, str]]] = {}
    for row in results:
        by_name.setdefault(row["model"], []).append(row)
    rows = []
    for name, candidates in by_name.items():
        arch, tag = split_name(name)
        default_size = timm.models.get_pretrained_cfg(name).input_size[-1]
        chosen = next((r for r in candidates if int(r["img_size"]) == default_size), candidates[0])
        img_size = int(chosen["img_size"])
        published = benchmark.get((arch, img_size))
        if published is None:
            raise SystemExit(f"no published GMACs for {arch} at {img_size} in {BENCHMARK}")
        default_tags = list(timm.models.get_arch_pretrained_cfgs(arch))
        rows.append({
            "name": name,
            "arch": arch,
            "tag": tag,
            "img_size": str(img_size),
            "top1": chosen["top1"],
            "published_gmacs": published["infer_gmacs"],
            "params_m": chosen["param_count"].replace(",", ""),
            "family": family_of(arch),
            "pretrain": pretrain_of(arch, tag, metadata),
            "is_default_tag": "true" if default_tags and default_tags[0] == name else "false",
            "gpu_images_per_s": published["infer_samples_per_sec"],
            "gpu_batch_size": published["infer_batch_size"],
        })
    return sorted(rows, key=lambda row: -float(row["top1"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="timm results folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if not (args.source / RESULTS).exists():
        sys.exit(f"{args.source / RESULTS} not found; pass --source pointing at timm's results/ files")
    rows = build_rows(args.source)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as handle:
        handle.writelines(f"# {line}\n" for line in HEADER)
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    families = Counter(row["family"] for row in rows)
    pretrains = Counter(row["pretrain"] for row in rows)
    print(f"wrote {len(rows)} models ({sum(r['is_default_tag'] == 'true' for r in rows)} default tags) to {args.out}")
    print(f"{len(families)} families; pretraining: {dict(pretrains.most_common())}")


if __name__ == "__main__":
    main()
