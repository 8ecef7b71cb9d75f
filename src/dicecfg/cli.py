"""The `dice` command line: flags -> a job dataclass -> one library call. Defaults live in the dataclasses."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence

from . import __version__
from .errors import DiceError
from .sampling.job import SampleJob, run_sample
from .training.config import DistillConfig
from .training.job import TrainJob, run_train

EPILOG = """examples:
  dice sample "a small red circle left of a blue square" --method dice
  dice sample --prompts prompts.txt --model ./sd15 --sharpener runs/sd15 --negative-prompt "blurry"
  dice train --model ./sd15 --prompts prompts.txt --steps 8000 --batch-size 16 --out runs/sd15
"""


def _given(ns: argparse.Namespace, names: Sequence[str]) -> dict:
    """Options the user actually gave (None means: keep the dataclass default)."""
    return {k: getattr(ns, k) for k in names if getattr(ns, k, None) is not None}


def field_help(cls: type) -> dict[str, str]:
    """One-line help per dataclass field, read from the comment beside it (the single source of defaults)."""
    import inspect
    import re

    pat = re.compile(r"^\s+(\w+): [^=]+= .*?#\s*(.+)$")
    comments = {m[1]: m[2] for line in inspect.getsource(cls).splitlines() if (m := pat.match(line))}
    return comments | {f.name: f.metadata["help"] for f in dataclasses.fields(cls) if "help" in f.metadata}


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="hub id or local diffusers folder (default: the shipped mini model)")
    p.add_argument("--device", help="cuda, cuda:1, cpu ... (default: cuda if available)")
    p.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], help="model dtype (default: per device)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dice",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
        description="DICE: distil classifier-free guidance into a text-embedding sharpener, then sample "
        "with one network evaluation per step.",
    )
    parser.add_argument("--version", action="version", version=f"dicecfg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)  # the same two flags also after the command
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks"
    )
    common.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars"
    )

    s = sub.add_parser("sample", parents=[common], help="generate images with dice, cfg, unguided or scaling")
    s.add_argument("prompts", nargs="*", help="prompts (or use --prompts FILE)")
    s.add_argument(
        "--prompts", dest="prompts_file", metavar="FILE", help="text file, one prompt per line, or JSONL"
    )
    _add_model_flags(s)
    s.add_argument(
        "--sharpener", help="sharpener folder or hub id (default with the mini model: the shipped one)"
    )
    s.add_argument("--method", choices=["dice", "cfg", "unguided", "scaling"])
    s.add_argument("--guidance-scale", type=float, help="CFG scale w for --method cfg (default 5)")
    s.add_argument("--alpha", type=float, help="edit strength for --method dice (default 1)")
    s.add_argument("--scale", type=float, help="embedding scale s for --method scaling (default 1.2)")
    s.add_argument("--negative-prompt", help="negative prompt (c_neg for cfg and dice)")
    s.add_argument("--steps", type=int, help="sampling steps (default 20)")
    s.add_argument("--seed", type=int, help="seed of the first image; image i uses seed+i (default 0)")
    s.add_argument("--batch-size", type=int, help="images per pipeline call (default 8)")
    s.add_argument(
        "--fast",
        action="store_true",
        default=None,
        help="replay the denoiser as CUDA graphs: same images, fewer kernel launches (CUDA only; "
        "eager with a notice elsewhere; docs/fast.md)",
    )
    s.add_argument("--height", type=int)
    s.add_argument("--width", type=int)
    s.add_argument("--out", help="output folder (default ./samples)")
    s.set_defaults(func=_sample)

    t = sub.add_parser(
        "train", parents=[common], help="distil CFG into a sharpener (re-run the same command to resume)"
    )
    _add_model_flags(t)
    t.add_argument(
        "--prompts", dest="prompts_file", metavar="FILE", help="training prompts (prompt-only mode)"
    )
    t.add_argument("--images", metavar="DIR", help="captioned images: metadata.jsonl or NAME.txt sidecars")
    t.add_argument("--out", required=True, help="run folder: checkpoints, stats.jsonl, final sharpener")
    docs = field_help(DistillConfig)
    for f in dataclasses.fields(DistillConfig):
        if f.name in ("progress", "validation_prompts", "negative_prompts"):
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            t.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{docs.get(f.name, '')} (default {f.default})",
            )
        else:
            kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
            t.add_argument(
                flag, type=kind, default=None, help=f"{docs.get(f.name, '')} (default {f.default})"
            )
    t.add_argument(
        "--gpus",
        type=int,
        metavar="N",
        help="train data-parallel in N processes, one per GPU (relaunches itself through torch.distributed.run; "
        "--batch-size is per process: global batch = batch-size x N x grad-accum; see docs/parallel.md)",
    )
    t.add_argument("--validation-prompt", action="append", dest="validation_prompts", metavar="PROMPT")
    t.add_argument(
        "--negative-prompts",
        dest="negative_prompts_file",
        metavar="FILE",
        help="negative prompts, one per line: each sample uses a random one as c_neg with probability "
        "--negative-prob (default: always the empty prompt)",
    )
    t.set_defaults(func=_train)

    d = sub.add_parser(
        "demo", parents=[common], help="unguided vs CFG vs DICE on the shipped mini model (CPU)"
    )
    d.add_argument("--prompts", type=int, help="held-out prompts shown (default 8)")
    d.add_argument("--steps", type=int, help="sampling steps (default 20)")
    d.add_argument("--out", help="output folder (default ./dice-demo)")
    d.add_argument("--device", help="default cpu")
    d.set_defaults(func=_demo)
    _add_eval_commands(sub, common)
    return parser


def _sample(ns: argparse.Namespace) -> None:
    names = [f.name for f in dataclasses.fields(SampleJob) if f.name not in ("prompts", "progress")]
    job = SampleJob(prompts=tuple(ns.prompts), progress=not ns.quiet, **_given(ns, names))
    paths = run_sample(job)
    print(f"wrote {len(paths)} images to {paths[0].parent}")


def _train(ns: argparse.Namespace) -> int | None:
    import os

    if (ns.gpus or 1) > 1 and "WORLD_SIZE" not in os.environ:
        from .training.parallel import relaunch

        return relaunch(ns.argv, ns.gpus)
    fields = [f.name for f in dataclasses.fields(DistillConfig)]
    opts = _given(ns, fields)
    if "validation_prompts" in opts:
        opts["validation_prompts"] = tuple(opts["validation_prompts"])
    if getattr(ns, "negative_prompts_file", None):
        from .sampling.prompts import load_prompts

        opts["negative_prompts"] = tuple(load_prompts(ns.negative_prompts_file))
    config = DistillConfig(progress=not ns.quiet, **{k: v for k, v in opts.items() if k != "progress"})
    job = TrainJob(config=config, **_given(ns, ["out", "model", "prompts_file", "images", "device", "dtype"]))
    sharp = run_train(job)
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    print(f"sharpener ({sharp.config['train_steps']} steps) saved to {job.out}")


def _demo(ns: argparse.Namespace) -> None:
    from .evaluation.demo import DemoJob, run_demo
    from .evaluation.report import demo_table

    summary = run_demo(DemoJob(progress=not ns.quiet, **_given(ns, ["prompts", "steps", "out", "device"])))
    print(demo_table(summary))
    print(f"grid: {summary['grid']}  (rows: unguided, cfg, dice; same seeds)")


def _add_config_flags(
    p: argparse.ArgumentParser, cls: type, skip: Sequence[str] = (), flags: dict | None = None
) -> None:
    """One flag per dataclass field (help from the field's comment); tuples take one or more values."""
    docs, flags = field_help(cls), flags or {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag, kind = flags.get(f.name, "--" + f.name.replace("_", "-")), str(f.type)
        default = f.default if f.default is not dataclasses.MISSING else None
        text = f"{docs.get(f.name, '')} (default {default})"
        if kind == "bool":
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
            continue
        elem = {"int": int, "float": float}.get(kind.removeprefix("tuple[").split(",")[0].split(" ")[0], str)
        nargs = {"nargs": "+", "action": "extend"} if kind.startswith("tuple[") else {}
        p.add_argument(flag, dest=f.name, type=elem, default=None, help=text, **nargs)


def _config(ns: argparse.Namespace, cls: type, **fixed):
    """The dataclass from the flags the user gave (tuples for list flags); defaults stay in the dataclass."""
    opts = _given(ns, [f.name for f in dataclasses.fields(cls) if f.name not in fixed])
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in opts.items()}, **fixed)


def _add_eval_commands(sub, common: argparse.ArgumentParser) -> None:
    from .bench.speed import BenchConfig
    from .evaluation.analysis import AnalyzeConfig
    from .evaluation.evaluate import EvalConfig

    e = sub.add_parser(
        "eval", parents=[common], help="method x metric table (resumable): alignment, FID, speed"
    )
    e.add_argument("prompts", nargs="*", help="prompts (default: the shapes world's held-out set)")
    _add_config_flags(
        e,
        EvalConfig,
        skip=("prompts", "progress"),
        flags={"sharpeners": "--sharpener", "prompts_file": "--prompts"},
    )
    e.set_defaults(func=_eval)
    a = sub.add_parser(
        "analyze", parents=[common], help="where the sharpener's edit lands (words vs padding)"
    )
    a.add_argument("prompts", nargs="*", help="prompts (default: the shapes world's held-out set)")
    _add_config_flags(a, AnalyzeConfig, skip=("prompts",), flags={"prompts_file": "--prompts"})
    a.set_defaults(func=_analyze)
    b = sub.add_parser(
        "bench", parents=[common], help="CFG vs DICE sampling time (random full-size models or --model)"
    )
    _add_config_flags(b, BenchConfig, skip=("command",), flags={"archs": "--arch"})
    b.set_defaults(func=_bench)


def _eval(ns: argparse.Namespace) -> None:
    from .evaluation.evaluate import EvalConfig, run_eval
    from .evaluation.report import eval_table

    ns.prompts = tuple(ns.prompts) or None
    report = run_eval(_config(ns, EvalConfig, progress=not ns.quiet))
    made = sum(r["generated"] for r in report["rows"])
    print(
        f"{len(report['rows'])} rows over {report['n']} prompts ({made} images generated now); "
        f"wrote {report['config']['out']}/eval.json, eval.md"
    )
    print(eval_table(report["rows"]))


def _analyze(ns: argparse.Namespace) -> None:
    from .evaluation.analysis import AnalyzeConfig, run_analyze
    from .evaluation.report import analysis_summary

    ns.prompts = tuple(ns.prompts) or None
    cfg = _config(ns, AnalyzeConfig)
    stats = run_analyze(cfg)
    print(f"wrote {cfg.out}/analysis.json, analysis.md, analysis.png")
    print(analysis_summary(stats))


def _bench(ns: argparse.Namespace) -> None:
    from .bench.speed import BenchConfig, run_bench
    from .evaluation.report import bench_table

    rows = run_bench(_config(ns, BenchConfig, command=" ".join(["dice", *ns.argv])))
    if ns.out:
        print(f"wrote {ns.out}")
    print(bench_table(rows))


def quiet_libraries() -> None:
    """Silence diffusers' and transformers' own loading bars and info logs."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    for lib in (dlog, tlog):
        lib.disable_progress_bar()
        lib.set_verbosity_error()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    ns.argv = list(sys.argv[1:] if argv is None else argv)  # recorded by benchmarks
    logging.basicConfig(
        level=logging.WARNING if ns.quiet else logging.INFO, format="%(levelname)s %(message)s"
    )
    if ns.quiet:
        quiet_libraries()
    if not getattr(ns, "func", None):
        parser.print_help()
        return 0
    try:
        code = ns.func(ns)
    except DiceError as e:
        if ns.debug:
            raise
        print(f"dice: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # SIGINT -> 130, SIGTERM -> 143 (128 + signal number)
        print("dice: interrupted", file=sys.stderr)
        return 128 + getattr(e, "signum", 2)
    return code or 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
