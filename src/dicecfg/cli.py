"""The `dice` command line: flags -> the command's frozen dataclass -> one library call.

Every option, its default and its help live in the command's dataclass (``flags.add_flags`` makes the flags);
a command here only prints what its library call returns.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import __version__
from .app.job import ServeJob, run_serve
from .bench.speed import BenchConfig, run_bench
from .errors import DiceError
from .evaluation import report
from .evaluation.analysis import AnalyzeConfig, run_analyze
from .evaluation.demo import DemoJob, run_demo
from .evaluation.evaluate import EvalJob, eval_inputs, run_eval
from .evaluation.tune import TuneJob, run_tune, tune_table
from .flags import add_flags, from_flags, spell_bare_consts, take_positionals
from .pipeline import NoTorchvisionNotice, hide_torchvision_notices  # noqa: F401 - the filter is named here too
from .runs.parallel import PEER_LOST, launched, main_process, peer_lost, relaunch
from .sampling.job import SampleJob, run_sample, sample_inputs
from .training.ceiling_job import CeilingJob, run_ceiling
from .training.job import TrainJob, run_train

EPILOG = """examples:
  dice sample "a small red circle left of a blue square" --method dice
  dice sample --prompts prompts.txt --model ./sd15 --sharpener runs/sd15 --negative-prompt "blurry"
  dice train --model ./sd15 --prompts prompts.txt --steps 8000 --batch-size 16 --out runs/sd15
  dice serve --port 7860
"""


def on_gpus(job: Any, argv: list[str], check: Callable[[Any], Any] | None = None) -> int | None:
    """``--gpus N`` (N > 1) in the process the user started: check the input here (``check``: bad input is one
    line before any process starts), then run this command once per GPU (``runs.parallel.relaunch``) and return
    its exit code. None when this process is to run the job itself (one GPU, or one of the launched ones)."""
    if job.gpus <= 1 or launched():
        return None
    if check is not None:
        check(job)
    return relaunch(argv, job.gpus)


def _sample(job: SampleJob, argv: list[str]) -> int | None:
    if (code := on_gpus(job, argv, sample_inputs)) is not None:
        return code
    paths = run_sample(job)
    if main_process():
        print(f"wrote {len(paths)} images to {paths[0].parent}")
    return None


def _train(job: TrainJob, argv: list[str]) -> int | None:
    if (code := on_gpus(job, argv)) is not None:
        return code
    sharp = run_train(job)
    if main_process():
        print(f"sharpener ({sharp.config['train_steps']} steps) saved to {job.out}")
    return None


def _demo(job: DemoJob, argv: list[str]) -> None:
    summary = run_demo(job)
    print(report.demo_table(summary))
    print(report.demo_summary(summary, commands=COMMANDS))


def _eval(job: EvalJob, argv: list[str]) -> int | None:
    if (code := on_gpus(job, argv, eval_inputs)) is not None:
        return code
    result = run_eval(job)
    if not main_process():
        return None
    made = sum(r["generated"] for r in result["rows"])
    print(
        f"{len(result['rows'])} rows over {result['n']} prompts ({made} images generated now); "
        f"wrote {job.out}/eval.json, eval.md"
    )
    print(report.eval_table(result["rows"]))
    return None


def _tune(job: TuneJob, argv: list[str]) -> None:
    result = run_tune(job)
    print(tune_table(result))
    best = result["best"]
    where = f"recorded in {result['written_to']}" if "written_to" in result else "not recorded (--no-write)"
    print(
        f"best: alpha={best['alpha']:g} on steps [{best['start']:g}, {best['stop']:g}) of {result['steps']} "
        f"({result['score']} on {result['n_prompts']} prompts x {result['seed_sets']} seed sets); {where}"
    )


def _analyze(job: AnalyzeConfig, argv: list[str]) -> None:
    stats = run_analyze(job)
    print(f"wrote {job.out}/analysis.json, analysis.md, analysis.png")
    print(report.analysis_summary(stats))


def _bench(job: BenchConfig, argv: list[str]) -> None:
    rows = run_bench(job)
    if job.out:
        print(f"wrote {job.out}")
    print(report.bench_table(rows))


def _ceiling(job: CeilingJob, argv: list[str]) -> None:
    result = run_ceiling(job)
    print(f"wrote {result.output_dir}/ceiling.json, ceiling.md, grid.png")
    print(result.table())


def _serve(job: ServeJob, argv: list[str]) -> None:
    server = run_serve(job)
    print(f"dice serve: {server.url}  (Ctrl-C stops)", flush=True)
    server.wait()


# command -> (its options, what runs it, one line of help)
COMMANDS: dict[str, tuple[type, Callable[[Any, list[str]], int | None], str]] = {
    "sample": (SampleJob, _sample, "generate images with dice, cfg, unguided or scaling"),
    "train": (TrainJob, _train, "distil CFG into a sharpener (re-run the same command to resume)"),
    "demo": (DemoJob, _demo, "unguided vs CFG vs DICE on the shipped mini model (CPU)"),
    "eval": (EvalJob, _eval, "method x metric table (resumable): alignment, FID, speed"),
    "tune": (
        TuneJob,
        _tune,
        "measure a sharpener's sampling settings (alpha, steps it acts on) and record the best in it",
    ),
    "analyze": (AnalyzeConfig, _analyze, "where the sharpener's edit lands (words vs padding)"),
    "bench": (BenchConfig, _bench, "CFG vs DICE sampling time (random full-size models or --model)"),
    "ceiling": (
        CeilingJob,
        _ceiling,
        "how much of CFG a free per-prompt embedding edit buys (vs a sharpener)",
    ),
    "serve": (ServeJob, _serve, "web app: unguided, CFG and DICE side by side (pip install 'dicecfg[app]')"),
}


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
    for name, (options, run, text) in COMMANDS.items():
        p = sub.add_parser(name, parents=[common], help=text, description=text)
        add_flags(p, options)
        p.set_defaults(options=options, run=run)
    return parser


class TqdmHandler(logging.StreamHandler):
    """Log records on stderr through ``tqdm.write``: a warning gets a line of its own, and a progress bar
    being drawn is redrawn below it instead of sharing its line."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise (as logging.Handler.handleError)
            self.handleError(record)


def setup_logging(quiet: bool) -> None:
    """INFO (WARNING with -q) to stderr through tqdm, without transformers' torchvision notices."""
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(levelname)s %(message)s",
        handlers=[TqdmHandler()],
    )
    hide_torchvision_notices()  # load_pipeline does it too, for Python callers
    if quiet:
        quiet_libraries()


def quiet_libraries() -> None:
    """Silence diffusers' and transformers' own loading bars and info logs."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    for lib in (dlog, tlog):
        lib.disable_progress_bar()
        lib.set_verbosity_error()


def misplaced(e: OSError) -> str:
    """One line for a path that is not what a command needs: a file where a folder goes (or the reverse), a name
    already taken, no permission."""
    what = {
        IsADirectoryError: "is a folder where a file is expected",
        NotADirectoryError: "is on a path through a file where a folder is expected",
        FileExistsError: "already exists",
        PermissionError: "may not be written by this user",
    }[type(e)]
    return f"{e.filename} {what} ({e.strerror}): move it away, or give another --out folder."


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)  # global options take no values
    if command in COMMANDS:
        argv = spell_bare_consts(argv, COMMANDS[command][0])
    ns, extra = parser.parse_known_args(argv)
    if extra and getattr(ns, "options", None):  # prompts after an option: `dice sample "a" --seed 5 "b"`
        extra = take_positionals(ns, ns.options, extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    setup_logging(ns.quiet)
    if not getattr(ns, "run", None):
        parser.print_help()
        return 0
    try:
        # what the command line knows beyond its flags: -q, and the command itself (recorded by bench)
        job = from_flags(ns, ns.options, progress=not ns.quiet, command=" ".join(["dice", *argv]))
        code = ns.run(job, argv)
    except DiceError as e:
        if ns.debug:
            raise
        print(f"dice: error: {e}", file=sys.stderr)
        return 2
    except (IsADirectoryError, NotADirectoryError, FileExistsError, PermissionError) as e:
        if ns.debug:  # a path that changed under the command after its checks: still one line
            raise
        print(f"dice: error: {misplaced(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # SIGINT -> 130, SIGTERM -> 143 (128 + signal number)
        print("dice: interrupted", file=sys.stderr)
        return 128 + getattr(e, "signum", 2)
    except Exception as e:
        if ns.debug or not launched() or not peer_lost(e):
            raise
        return PEER_LOST  # another process of this --gpus run is gone: the launcher names it
    return code or 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
