"""``osf search``, ``osf extract`` and ``osf demo`` (registered in ``osf.cli``)."""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from osf.search import run as _run
from osf.search.run import build_evaluator, check_task_inputs, read_run, run_storage, write_run


def _errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Bad input ends the command with one ``error: ...`` line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
            msg = " ".join(str(e).split()) or type(e).__name__
            typer.secho(f"error: {msg}", err=True, fg=typer.colors.RED)
            raise typer.Exit(2) from None

    return wrapper


@_errors
def search_cmd(
    model: str = typer.Argument(..., help="Local HF folder, hub id, or built-in tiny model name."),
    task: str = typer.Option(..., "--task", help="lm-eval task(s) (comma-separated), cifar10, cifar100, imagenet, or perplexity."),
    out: Path = typer.Option(..., "--out", help="Run folder (study, results); re-run to resume."),
    trials: int = typer.Option(50, "--trials", min=1, help="COMPLETE trials the study ends with."),
    max_params: Optional[float] = typer.Option(None, "--max-params", help="Budget: <=1 fraction of the original, >1 absolute."),
    objectives: str = typer.Option("score,params", "--objectives", help="Comma-separated: score, params, macs, latency."),
    sampler: str = typer.Option("auto", "--sampler", help="auto, nsga2, tpe, random, gp."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna RDB URL to share the study between workers."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Examples per evaluation."),
    data: Optional[Path] = typer.Option(None, "--data", help="Data folder/file for image tasks or perplexity."),
    include_path: Optional[Path] = typer.Option(None, "--include-path", help="Folder of local lm-eval task YAMLs."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    batch_size: int = typer.Option(16, "--batch-size"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Search MODEL's supernet for the best subnets on TASK."""
    from osf.search.objectives import check_constraints, check_objectives
    from osf.search.samplers import SAMPLERS
    from osf.search.study import _check_run_dir

    objs = check_objectives(objectives)
    budgets = check_constraints({"params": max_params} if max_params is not None else None)
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose from {list(SAMPLERS)}")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"--device must be cpu or cuda[:N], got {device!r}")
    run_dir = _check_run_dir(out)
    check_task_inputs(task, data, include_path)

    import osf
    import osf.search as osf_search

    net, pre = _run.load_model(model)
    net.to(device)
    evaluator = build_evaluator(task, pre, data=data, include_path=include_path, limit=limit, batch_size=batch_size)
    sn = osf.supernet(net)
    spec = {
        "model": model, "task": task, "objectives": list(objs), "max_params": max_params, "space": json.loads(sn.space.to_json()),
        "trials": trials, "sampler": sampler, "storage": storage, "limit": limit, "seed": seed, "device": device,
        "data": str(data) if data else None, "include_path": str(include_path) if include_path else None,
        "study_name": _study_name(model, task, objs, max_params),
    }
    write_run(run_dir, spec)
    result = osf_search.search(sn, evaluator, objectives=objs, n_trials=trials, sampler=sampler, constraints=budgets,
                               storage=storage, study_name=spec["study_name"], seed=seed, run_dir=run_dir)
    result.save(run_dir)
    result.plot_pareto(run_dir / "pareto.png")
    typer.echo(result.table())
    typer.echo(f"results in {run_dir}")


def _study_name(model: str, task: str, objectives: tuple[str, ...], max_params: float | None) -> str:
    # the same for every worker of one run, whatever its --out, so --storage URLs are shared
    import hashlib

    key = json.dumps([model, task, list(objectives), max_params])
    return f"osf-{Path(model).name[:30]}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


@_errors
def extract_cmd(
    run_dir: Path = typer.Argument(..., help="A folder written by `osf search`."),
    out: Path = typer.Option(..., "--out", help="Where to save the subnet."),
    trial: Optional[int] = typer.Option(None, "--trial", help="Trial number to extract."),
    best: bool = typer.Option(False, "--best", help="Extract the best-scoring trial (within --max-params)."),
    max_params: Optional[float] = typer.Option(None, "--max-params", help="With --best: <=1 fraction, >1 absolute."),
) -> None:
    """Extract a subnet found by `osf search` as a real, smaller model."""
    if (trial is None) == (not best):
        raise ValueError("give exactly one of --trial N or --best")
    spec = read_run(run_dir)
    from osf.search.study import _check_run_dir

    _check_run_dir(out)
    import optuna

    import osf
    from osf.search.result import SearchResult
    from osf.search.storage import make_storage
    from osf.space import SearchSpace

    study = optuna.load_study(study_name=spec["study_name"], storage=make_storage(run_storage(run_dir, spec), None))
    net, pre = _run.load_model(spec["model"])
    sn = osf.supernet(net)
    if json.loads(sn.space.to_json()) != spec["space"]:
        raise ValueError(f"the supernet of {spec['model']!r} no longer has the space recorded in {run_dir}/run.json")
    result = SearchResult(study=study, space=SearchSpace.from_json(json.dumps(spec["space"])),
                          objectives=tuple(spec["objectives"]), reference=study.user_attrs.get("osf_reference", {}))
    if best:
        row = result.best(max_params=max_params)
        number = int(row["number"])
    else:
        number = int(trial)  # type: ignore[arg-type]
        if not 0 <= number < len(study.trials):
            raise ValueError(f"trial {number} does not exist; the study has trials 0..{len(study.trials) - 1}")
    cfg = result.config(number)
    sub = sn.extract(cfg)
    osf.save_subnet(sub, out)
    if pre is not None and hasattr(pre, "save_pretrained"):
        pre.save_pretrained(str(out))
    from osf.search.card import write_card

    rows = result.trials
    row = rows[rows["number"] == number].iloc[0].to_dict() if "number" in rows else {}
    metrics = {k: row.get(k) for k in ("score", "params", "macs", "latency")}
    metrics["params"] = sn.num_params(cfg)
    write_card(out, spec["model"], spec["task"], number, cfg, metrics, sn.num_params(sn.space.largest()))
    typer.echo(f"trial {number}: {sn.num_params(cfg):,} parameters -> {out}")


@_errors
def demo_cmd(
    out: Path = typer.Option(Path("osf-demo"), "--out", help="Where the run and the subnet go."),
    trials: int = typer.Option(20, "--trials", min=1),
    train_seconds: float = typer.Option(90.0, "--train-seconds", help="CPU training budget (cached afterwards)."),
) -> None:
    """Train a small Mamba LM, build its supernet, search it with lm-eval, save the best half-size subnet."""
    from osf.demo import run_demo

    run_demo(out, trials=trials, train_seconds=train_seconds)


def register(app: typer.Typer) -> None:
    """Add the commands to the ``osf`` app."""
    app.command("search")(search_cmd)
    app.command("extract")(extract_cmd)
    app.command("demo")(demo_cmd)
