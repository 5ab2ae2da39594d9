"""The command line of the image studies: ``python -m mimlib.image_study`` (one run).

One run in the background (re-running resumes from the checkpoint, a finished run is only
evaluated)::

    python -m mimlib.image_study --preset book --dataset mnist --prior standard \\
        --objective mim --threads 1 [--seed 0] [--runs-dir runs]
    python -m mimlib.image_study --model pixelhvae --preset book --dataset mnist \\
        --objective amim --threads 1        # prior: the preset's (VampPrior)

With ``--model pixelhvae`` the presets are those of study ``"pixelhvae"`` in
:mod:`mimlib.presets`, else those of ``"images"``. :func:`parse_command_line` turns the arguments
into the run's :class:`mimlib.image_config.ImageStudyConfig`; :func:`main` trains and evaluates it
through :mod:`mimlib.image_study` (the command keeps that module's name: ``mimlib/image_study.py``'s
``__main__`` block calls :func:`main`).
"""

from __future__ import annotations

import argparse
import functools
import json
from dataclasses import asdict
from typing import Any

from . import image_study as S
from . import images as I
from . import presets
from .image_codes import figure_arrays
from .image_config import MODELS, PRIOR_SHORT, ImageStudyConfig

__all__ = ["parse_command_line", "main"]


def parse_command_line(argv: list[str] | None = None) -> tuple[ImageStudyConfig, argparse.Namespace]:
    """The run config and the parsed arguments of ``python -m mimlib.image_study`` (exits 2 on bad input)."""
    ap = argparse.ArgumentParser(prog="python -m mimlib.image_study", description=main.__doc__)
    ap.add_argument("--model", default="convhvae", choices=list(MODELS),
                    help="convhvae (presets of study 'images') or pixelhvae (presets of study 'pixelhvae')")
    ap.add_argument("--preset", default="book", choices=sorted(presets.PRESETS["images"]))
    ap.add_argument("--dataset", required=True, choices=list(I.DATASETS))
    ap.add_argument("--prior", default=None, choices=list(PRIOR_SHORT),
                    help="required for convhvae; pixelhvae: the preset's (vampprior) by default")
    ap.add_argument("--objective", required=True, choices=["mim", "vae", "amim"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (e.g. 1)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--runs-dir", default="runs", help="folder of the run folders (the chapter uses ../runs "
                                                        "from book/, i.e. runs/ at the repository root)")
    ap.add_argument("--no-eval", action="store_true", help="train only")
    ap.add_argument("--records-dir", default=None,
                    help="also leave the run's record there (mimlib.records; e.g. book/results/records), with "
                         "the figure arrays of chapter 07 (t-SNE of 1,000 test codes, 16 reconstructions and "
                         "samples); a run already recorded there is read, not trained")
    ap.add_argument("--set", nargs="+", action="extend", default=[], metavar="NAME=VALUE",
                    help="further overrides of the preset, VALUE parsed as JSON (e.g. max_epochs=2); may be "
                         "repeated, every one counts")
    args = ap.parse_args(argv)
    if args.model == "convhvae" and args.prior is None:
        ap.error("the following arguments are required: --prior")
    explicit = {"dataset": args.dataset, "prior": args.prior, "objective": args.objective, "seed": args.seed,
                "threads": args.threads, "device": args.device}
    overrides: dict[str, Any] = {}
    for item in args.set:
        name, eq, value = item.partition("=")
        if not eq or not name:
            ap.error(f"--set expects NAME=VALUE, got {item!r}")
        if name in overrides:
            ap.error(f"--set {name} is given twice ({overrides[name]!r} and {value!r})")
        try:
            overrides[name] = json.loads(value)
        except json.JSONDecodeError:
            overrides[name] = value
    for name in set(overrides) & set(explicit):
        flag_default = ap.get_default(name)
        if explicit[name] is not None and explicit[name] != flag_default and explicit[name] != overrides[name]:
            ap.error(f"--{name} {explicit[name]} and --set {name}={overrides[name]} disagree; give one")
        explicit[name] = overrides.pop(name)
    study = "images" if args.model == "convhvae" else args.model
    try:
        cfg = presets.resolve(study, args.preset, **explicit, **overrides)
    except (TypeError, ValueError) as e:
        hint = (" (--set values are read as JSON: 5, 0.5, [1, 3], true; anything else is a string)"
                if isinstance(e, TypeError) and overrides else "")
        ap.error(f"{e}{hint}")
    if args.records_dir is not None and args.no_eval:
        ap.error("--records-dir records evaluated runs; drop --no-eval")
    return cfg, args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train (resuming if interrupted) and evaluate one run; prints and returns its row."""
    cfg, args = parse_command_line(argv)
    print(f"{S.run_name(cfg)}: {json.dumps(asdict(cfg))}", flush=True)
    if args.records_dir is not None:
        out = S.run_study(cfg, runs_dir=args.runs_dir, records_dir=args.records_dir, log=True,
                          arrays=functools.partial(figure_arrays, n_tsne=1_000, n_images=16))
        row = out.results.iloc[0].to_dict()
        print(json.dumps(row, indent=1, default=str), flush=True)
        return row
    S._preflight([cfg], args.runs_dir, None)
    with S._held(cfg, args.runs_dir):
        return _train_and_evaluate(cfg, args)


def _train_and_evaluate(cfg: ImageStudyConfig, args: argparse.Namespace) -> dict[str, Any]:
    """:func:`main` without ``--records-dir``."""
    model, res, data = S.train_model(cfg, args.runs_dir, log=True)
    state = "loaded (finished earlier)" if res.loaded else (
        f"resumed after epoch {res.resumed_from + 1}" if res.resumed_from is not None else "trained")
    print(f"{state}: {len(res.history)} epochs, best epoch {res.best_epoch[0] + 1}, "
          f"training time {res.seconds:.0f} s", flush=True)
    if args.no_eval:
        return {}
    row = S.evaluate_model(model, data, cfg, res, S.run_dir_of(cfg, args.runs_dir))
    print(json.dumps(row, indent=1), flush=True)
    return row
