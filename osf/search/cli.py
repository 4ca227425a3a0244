"""``osf search``, ``osf extract`` and ``osf demo`` (registered in ``osf.cli``)."""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Callable, Optional

import typer

import osf.search.run as run_module
from osf.search.run import check_task_inputs, read_run, write_run
from osf.search.storage import JOURNAL_NAME, default_study_name


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


def _budget(flag: str, when: str, limit: str) -> Any:
    """A budget option of ``osf search`` / ``osf extract --best`` (units named by the flag)."""
    return typer.Option(None, flag, help=f"{when}: at most {limit}.")


@_errors
def search_cmd(
    model: str = typer.Argument(..., help="Local HF folder, supernet checkpoint folder (sn.save_pretrained), hub id, "
                                "or built-in tiny model name."),
    task: str = typer.Option(..., "--task", help="lm-eval task(s) (comma-separated), cifar10, cifar100, imagenet, imagefolder, or perplexity."),
    out: Path = typer.Option(..., "--out", help="Run folder (study, results); re-run to resume."),
    trials: int = typer.Option(50, "--trials", min=1, help="COMPLETE trials the study ends with."),
    max_params: Optional[float] = _budget("--max-params", "Budget", "this many parameters"),
    max_params_frac: Optional[float] = _budget("--max-params-frac", "Budget", "this fraction (0, 1] of the original's "
                                               "parameters"),
    max_macs: Optional[float] = _budget("--max-macs", "Budget", "this many MACs"),
    max_macs_frac: Optional[float] = _budget("--max-macs-frac", "Budget", "this fraction (0, 1] of the original's MACs"),
    max_latency_ms: Optional[float] = _budget("--max-latency-ms", "Budget", "this latency (ms)"),
    objectives: str = typer.Option("score,params", "--objectives", help="Comma-separated: score, params, macs, latency."),
    sampler: str = typer.Option("auto", "--sampler", help="auto, nsga2, tpe, random, gp."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna RDB URL to share the study between workers "
                                          "(a relative sqlite path is relative to --out)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Examples per evaluation (images, lm-eval documents, "
                                        "perplexity batches); default all."),
    data: Optional[Path] = typer.Option(None, "--data", help="Data folder/file for image tasks or perplexity."),
    include_path: Optional[Path] = typer.Option(None, "--include-path", help="Folder of local lm-eval task YAMLs."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda[:N]."),
    batch_size: int = typer.Option(16, "--batch-size"),
    num_fewshot: Optional[int] = typer.Option(None, "--num-fewshot", help="Few-shot examples for lm-eval tasks (default 0)."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Search MODEL's supernet for the best subnets on TASK."""
    from osf.search.objectives import check_budgets, check_objectives
    from osf.search.samplers import SAMPLERS
    from osf.search.study import check_run_dir

    # every option is checked before anything is loaded or written
    objs = check_objectives(objectives)
    budget_args = {"max_params": max_params, "max_params_frac": max_params_frac, "max_macs": max_macs,
                   "max_macs_frac": max_macs_frac, "max_latency_ms": max_latency_ms}
    budgets = check_budgets(budget_args, cli=True)
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose from {list(SAMPLERS)}")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be a positive number of examples per evaluation (or left out for all), got {limit}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be a positive integer, got {batch_size}")
    if num_fewshot is not None and num_fewshot < 0:
        raise ValueError(f"--num-fewshot must be 0 or more, got {num_fewshot}")
    if num_fewshot is not None and (task in run_module.BUILTIN_TASKS):
        raise ValueError(f"--num-fewshot applies to lm-eval tasks only, not to --task {task}")
    _check_device(device)
    run_dir = check_run_dir(out, "--out")
    if storage is not None:
        _check_storage(storage, run_dir)
    check_task_inputs(task, data, include_path)
    if num_fewshot is None and task not in run_module.BUILTIN_TASKS:
        num_fewshot = 0
    given = {"model": model, "task": task, "objectives": list(objs), **budget_args, "limit": limit, "storage": storage,
             "data": str(data.resolve()) if data else None, "batch_size": batch_size, "num_fewshot": num_fewshot,
             "include_path": str(include_path.resolve()) if include_path else None}
    run_module.check_run_identity(run_dir, given)  # before the model is loaded: a changed option is refused at once

    import osf
    import osf.search as osf_search

    net, pre = run_module.load_model(model)
    loaded = net if isinstance(net, osf.Supernet) else None  # MODEL is a supernet checkpoint folder
    plain = loaded.model if loaded is not None else net
    run_module.check_model_kind(task, plain, model)
    checksum = run_module.weights_checksum(net)
    net.to(device)
    evaluator = run_module.build_evaluator(task, pre, data=data, include_path=include_path, limit=limit, batch_size=batch_size,
                                num_fewshot=num_fewshot)
    run_module.check_model_fits_task(task, plain, pre, evaluator, model)
    sn = loaded if loaded is not None else osf.supernet(net)
    _check_params_budget(sn, budgets)
    spec = {
        **given, "space": json.loads(sn.space.to_json()), "weights_sha256": checksum,
        run_module.SUPERNET_CONFIG_KEY: sn.build_config.to_dict(),
        "trials": trials, "sampler": sampler, "seed": seed, "device": device,
        "study_name": default_study_name(Path(model).name, objs, budgets, sn.space.to_json(), model=model, task=task,
                                         limit=limit, batch_size=batch_size, num_fewshot=num_fewshot),
    }
    old = run_module.check_run_identity(run_dir, spec)
    if old is not None and old.get("study_name"):
        spec["study_name"] = old["study_name"]  # the study this run folder already holds
        if not storage:
            _check_study_present(run_dir, spec)
    created = old is None
    journal_existed = (run_dir / JOURNAL_NAME).exists()
    write_run(run_dir, spec)
    try:
        result = osf_search.search(sn, evaluator, objectives=objs, n_trials=trials, sampler=sampler, constraints=budgets,
                                   storage=storage, study_name=spec["study_name"], seed=seed, run_dir=run_dir)
    except KeyboardInterrupt:
        # search() abandoned the running trial, wrote the results so far and said how to resume
        typer.secho(f"to resume: run the same `osf search` command again (same --out {out})", err=True)
        raise typer.Exit(130) from None
    except BaseException:
        if created:
            _forget_failed_start(run_dir, spec, journal_existed)
        raise
    result.save(run_dir)
    result.plot_pareto(run_dir / "pareto.png")
    typer.echo(result.table())
    typer.echo(f"results in {run_dir}")


def _check_params_budget(sn: Any, budgets: dict[str, float]) -> None:
    """A parameter budget the smallest subnet breaks, refused before anything is written (exact and cheap)."""
    from osf.search.objectives import check_reachable

    params = {a: v for a, v in budgets.items() if a in ("max_params", "max_params_frac")}
    if params:
        ends = {"params": float(sn.num_params(sn.space.smallest()))}, {"params": float(sn.num_params(sn.space.largest()))}
        check_reachable(params, *ends, cli=True)


def _check_device(device: str) -> None:
    import torch

    if device != "cpu" and device != "cuda" and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {device!r}")
    if device.startswith("cuda"):
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ValueError(f"--device {device}: CUDA is not available on this machine (no GPU or no CUDA build of "
                             "torch); use --device cpu")
        if ":" in device and int(device[5:]) >= n:
            raise ValueError(f"--device {device}: this machine has {n} CUDA device(s), cuda:0..cuda:{n - 1}")


def _check_storage(storage: str, run_dir: Path) -> None:
    from osf.search.storage import check_url, resolve_sqlite

    if "://" not in storage:
        raise ValueError(f"--storage {storage!r} is not a database URL; expected e.g. sqlite:///study.db (relative to "
                         "--out) or postgresql://user:password@host/db; leave --storage out to keep the study in --out")
    check_url(resolve_sqlite(storage, run_dir), option="--storage")


def _check_study_present(run_dir: Path, spec: dict[str, Any]) -> None:
    """Resuming a run whose journal was deleted, or whose run.json names another study, would start over silently."""
    journal = run_dir / JOURNAL_NAME
    if not journal.is_file():
        if (run_dir / "trials.csv").is_file():
            raise FileNotFoundError(f"{str(run_dir)!r} has results (trials.csv) but its study {JOURNAL_NAME} is missing "
                                    "(deleted?), so the run cannot be resumed; choose a new --out, or delete the folder "
                                    "to start over")
        return
    import optuna

    from osf.search.storage import make_storage

    names = optuna.get_all_study_names(make_storage(str(journal), None))
    if names and spec["study_name"] not in names:
        raise ValueError(f"{str(run_dir / run_module.RUN_FILE)!r} names study {spec['study_name']!r}, but {JOURNAL_NAME} "
                         f"holds {names} (run.json edited?); restore the study name, or choose a new --out")


def _forget_failed_start(run_dir: Path, spec: dict[str, Any], journal_existed: bool) -> None:
    """A search that failed before finishing any trial leaves nothing that blocks the corrected command."""
    import optuna

    from osf.search.storage import make_storage

    try:
        storage = make_storage(run_module.run_storage(run_dir, spec), None)
        study = optuna.load_study(study_name=spec["study_name"], storage=storage)
        done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    except Exception:
        done = 0
    if done:
        return
    (run_dir / run_module.RUN_FILE).unlink(missing_ok=True)
    if not journal_existed and not spec.get("storage"):
        (run_dir / JOURNAL_NAME).unlink(missing_ok=True)
        (run_dir / (JOURNAL_NAME + ".lock")).unlink(missing_ok=True)


@_errors
def extract_cmd(
    run_dir: Path = typer.Argument(..., help="A folder written by `osf search`."),
    out: Path = typer.Option(..., "--out", help="Where to save the subnet."),
    trial: Optional[int] = typer.Option(None, "--trial", help="Trial number to extract."),
    best: bool = typer.Option(False, "--best", help="Extract the best-scoring trial (within the budgets below)."),
    max_params: Optional[float] = _budget("--max-params", "With --best", "this many parameters"),
    max_params_frac: Optional[float] = _budget("--max-params-frac", "With --best", "this fraction (0, 1] of the "
                                               "original's parameters"),
    max_macs: Optional[float] = _budget("--max-macs", "With --best", "this many MACs"),
    max_macs_frac: Optional[float] = _budget("--max-macs-frac", "With --best", "this fraction (0, 1] of the original's "
                                             "MACs"),
    max_latency_ms: Optional[float] = _budget("--max-latency-ms", "With --best", "this latency (ms, as measured by the "
                                              "search)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a model already saved in --out."),
) -> None:
    """Extract a subnet found by `osf search` as a real, smaller model."""
    if (trial is None) == (not best):
        raise ValueError("give exactly one of --trial N or --best")
    from osf.search.objectives import check_budgets, option

    budgets = check_budgets({"max_params": max_params, "max_params_frac": max_params_frac, "max_macs": max_macs,
                             "max_macs_frac": max_macs_frac, "max_latency_ms": max_latency_ms}, cli=True)
    if trial is not None and budgets:
        given = ", ".join(option(a, True) for a in budgets)
        raise ValueError(f"budgets ({given}) select among trials with --best; --trial N takes that trial as it is. Use "
                         "--best with the budgets, or --trial N alone")
    spec = read_run(run_dir)
    from osf.search.study import check_run_dir

    check_run_dir(out, "--out")
    import optuna

    import osf
    from osf.search.result import SearchResult
    from osf.search.storage import make_storage
    from osf.space import SearchSpace

    study = _load_study(run_dir, spec)
    build_config = run_module.supernet_config(spec, run_dir)  # before the model is loaded: a bad run.json fails at once
    net, pre = run_module.load_model(spec["model"])
    if spec.get("weights_sha256") and run_module.weights_checksum(net) != spec["weights_sha256"]:
        raise ValueError(f"the weights of model {spec['model']!r} changed since the search in {str(run_dir)!r} (checksum "
                         "differs): its scores and configs describe other weights; search again, or extract from the "
                         "model the search used")
    if isinstance(net, osf.Supernet):
        sn = net  # a supernet checkpoint: restored as saved, space and all
    else:
        if build_config.importance == "activation":
            raise ValueError(f"the supernet of {str(run_dir)!r} was built with activation importance from calibration "
                             "batches, which are not saved: save that supernet with sn.save_pretrained and search and "
                             "extract from the checkpoint folder")
        sn = osf.supernet(net, config=build_config)  # built as the search built it
    if json.loads(sn.space.to_json()) != spec["space"]:  # a guard: the study's configs must fit this supernet
        raise ValueError(f"the supernet of {spec['model']!r} no longer has the space recorded in {run_dir}/run.json "
                         "(another osf version?); extract with the osf version that ran the search")
    result = SearchResult(study=study, space=SearchSpace.from_json(json.dumps(spec["space"])),
                          objectives=tuple(spec["objectives"]), reference=study.user_attrs.get("osf_reference", {}))
    if best:
        row = result.best(**budgets)
        number = int(row["number"])
    else:
        number = int(trial)  # type: ignore[arg-type]
        done = [t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
        if number not in done:
            state = study.trials[number].state.name if 0 <= number < len(study.trials) else None
            why = f"did not complete ({state})" if state else "does not exist"
            raise ValueError(f"trial {number} {why}; completed trials: {_ranges(done)}")
    cfg = result.config(number)
    sub = sn.extract(cfg)
    from osf.errors import FolderNotEmptyError

    try:
        osf.save_subnet(sub, out, overwrite=overwrite)
    except FolderNotEmptyError as e:
        raise ValueError(str(e).replace("pass overwrite=True", "pass --overwrite")) from None
    if pre is not None and hasattr(pre, "save_pretrained"):
        pre.save_pretrained(str(out))
    from osf.search.card import save_search_record, search_record, write_card

    rows = result.trials
    row = rows[rows["number"] == number].iloc[0].to_dict() if "number" in rows else {}
    metrics = {k: row.get(k) for k in ("score", "params", "macs", "latency")}
    metrics["params"] = sn.num_params(cfg)
    reference, notes = dict(result.reference), []
    if metrics.get("macs") is None or metrics["macs"] != metrics["macs"]:  # the search did not measure MACs
        try:
            metrics["macs"], reference["macs"] = sn.macs(cfg), sn.macs(sn.space.largest())
            notes.append("MACs: one forward pass of the model's default example inputs (the search did not measure them)")
        except Exception as e:  # the card says so; the subnet itself is saved and fine
            notes.append(f"MACs: not counted ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    meta = getattr(sub, "_osf_subnet", None) or {}
    record = search_record(spec, result, number, meta.get("config", cfg), metrics, reference, study.user_attrs.get("osf_metric"),
                           meta.get("config_expresses_subnet"), notes)
    save_search_record(out, record, result)
    write_card(out)
    typer.echo(f"trial {number}: {sn.num_params(cfg):,} parameters -> {out}")


def _load_study(run_dir: Path, spec: dict[str, Any]) -> Any:
    """The run's study; a deleted journal/database or an edited study name is named, not a traceback."""
    import optuna

    from osf.search.storage import make_storage, sqlite_file

    url = run_module.run_storage(run_dir, spec)
    if not spec.get("storage"):
        if not Path(url).is_file():
            raise FileNotFoundError(f"the study of {str(run_dir)!r} is gone: {url!r} is missing (deleted?); run "
                                    "`osf search` again with the same --out")
    else:
        db = sqlite_file(url)
        if db is not None and not db.is_file():  # opening it would create an empty database here
            raise FileNotFoundError(f"the run's study database {str(db)!r} (--storage {spec['storage']!r}) does not exist")
    storage = make_storage(url, None)
    try:
        return optuna.load_study(study_name=spec["study_name"], storage=storage)
    except KeyError:
        names = optuna.get_all_study_names(storage)
        raise ValueError(f"the storage of {str(run_dir)!r} has no study {spec['study_name']!r} (run.json edited, or the "
                         f"study deleted?); it holds {names or 'no studies'}") from None


def _ranges(numbers: list[int]) -> str:
    if not numbers:
        return "none"
    numbers, out, start = sorted(numbers), [], None
    for i, n in enumerate(numbers):
        start = n if start is None else start
        if i + 1 == len(numbers) or numbers[i + 1] != n + 1:
            out.append(f"{start}" if start == n else f"{start}..{n}")
            start = None
    return ", ".join(out)


@_errors
def demo_cmd(
    out: Path = typer.Option(Path("osf-demo"), "--out", help="Where the run and the subnet go."),
    trials: int = typer.Option(20, "--trials", min=1),
    train_seconds: float = typer.Option(90.0, "--train-seconds", help="CPU training budget (cached afterwards)."),
    supernet_steps: int = typer.Option(100, "--supernet-steps", min=1, help="Supernet training steps (cached "
                                       "afterwards)."),
) -> None:
    """Train a small Mamba LM, search its supernet zero-shot, train the supernet, search it again,
    save the best half-size subnet."""
    from osf.demo import run_demo

    run_demo(out, trials=trials, train_seconds=train_seconds, supernet_steps=supernet_steps)


def register(app: typer.Typer) -> None:
    """Add the commands to the ``osf`` app."""
    app.command("search")(search_cmd)
    app.command("extract")(extract_cmd)
    app.command("demo")(demo_cmd)
