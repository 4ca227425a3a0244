"""``osf search``, ``osf extract`` and ``osf demo`` (registered in ``osf.cli``)."""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Callable, Optional

import typer

import osf.search.run as run_module
from osf.elastic.config import BLOCK_ORDERS
from osf.elastic.importance import IMPORTANCE_METHODS
from osf.search.run import check_task_inputs, read_run, write_run
from osf.search.storage import JOURNAL_NAME, default_study_name

# ``osf search`` options that set a SupernetConfig field (the choices come from the modules that define them)
DEFAULT_CALIBRATION = 8  # held-out batches osf search ranks channels and layers on unless told otherwise
BUILD_OPTIONS = {"--space": "space", "--importance": "importance", "--block-order": "block_order", "--depth": "min_depth"}


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
    task: str = typer.Option(..., "--task", help="lm-eval task(s) (comma-separated), cifar10, cifar100, imagenet, imagefolder, perplexity, or "
                      "clip-zeroshot:cifar10 / clip-zeroshot:cifar100 (CLIP zero-shot; --data DIR)."),
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
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Tokenizer folder or hub id, for a model that "
                                            "ships without one (default: the model's own)."),
    space: Optional[str] = typer.Option(None, "--space", help="Restrict the search space: a JSON/YAML file or inline "
                                        "JSON of dim pattern -> sizes, e.g. '{\"*:d_state\": [16, 8]}'."),
    importance: Optional[str] = typer.Option(None, "--importance", help="How channels are ranked: "
                                             f"{', '.join(IMPORTANCE_METHODS)} (see osf.SupernetConfig)."),
    block_order: Optional[str] = typer.Option(None, "--block-order", help="How layers are ranked for dropping: "
                                              f"{', '.join(BLOCK_ORDERS)}."),
    calibration: Optional[int] = typer.Option(None, "--calibration", help="Rank channels and layers on this many "
                                              "batches of the task's held-out data, never scored (default "
                                              f"{DEFAULT_CALIBRATION} where the task has such data; 0: random inputs)."),
    depth: Optional[float] = typer.Option(None, "--depth", help="Share (0, 1] of each layer stack every subnet keeps "
                                          "(1: no layer is dropped)."),
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
    if calibration is not None and calibration < 0:
        raise ValueError(f"--calibration must be a number of batches >= 0 (0: rank on random inputs; left out: "
                         f"{DEFAULT_CALIBRATION} when the task has held-out data), got {calibration}")
    overrides = parse_space(space)
    build = check_build_options({"--space": overrides, "--importance": importance, "--block-order": block_order,
                                 "--depth": depth})
    if tokenizer is not None and not tokenizer.strip():
        raise ValueError("--tokenizer must name a tokenizer folder or hub id, got an empty string")
    if num_fewshot is None and task not in run_module.BUILTIN_TASKS:
        num_fewshot = 0
    given = {"model": model, "task": task, "objectives": list(objs), **budget_args, "limit": limit, "storage": storage,
             "data": str(data.resolve()) if data else None, "batch_size": batch_size, "num_fewshot": num_fewshot,
             "include_path": str(include_path.resolve()) if include_path else None,
             "tokenizer": tokenizer, "calibration": calibration, "space_overrides": overrides}
    earlier = run_module.check_run_identity(run_dir, given)  # before the model is loaded: a changed option is refused at once
    if earlier is not None:
        _check_same_build(run_dir, earlier, given, supernet=False)

    import osf
    import osf.search as osf_search

    tok = load_tokenizer(tokenizer) if tokenizer is not None else None  # before the model: a bad one fails fast
    if tok is None:
        check_tokenizer_shipped(model, task)
    net, pre = run_module.load_model(model)
    loaded = net if isinstance(net, osf.Supernet) else None  # MODEL is a supernet checkpoint folder
    if loaded is not None:
        _refuse_build_options_for_checkpoint(model, {**build, "--calibration": calibration})
    plain = loaded.model if loaded is not None else net
    run_module.check_model_kind(task, plain, model)
    pre = tok if tok is not None else shipped_preprocessor(model, pre, task)
    checksum = run_module.weights_checksum(net)
    net.to(device)
    evaluator = run_module.build_evaluator(task, pre, data=data, include_path=include_path, limit=limit, batch_size=batch_size,
                                num_fewshot=num_fewshot)
    run_module.check_model_fits_task(task, plain, pre, evaluator, model)
    batches = calibration_batches(evaluator, calibration, task)
    if loaded is not None:
        sn = loaded
        if overrides is not None:
            sn.space = sn.space.restrict(overrides)  # osf extract restricts the restored checkpoint the same way
    else:
        sn = osf.supernet(net, config=build_config(build), calibration=batches)
    _check_params_budget(sn, budgets)
    spec = {
        **given, "space": json.loads(sn.space.to_json()), "weights_sha256": checksum,
        run_module.SUPERNET_CONFIG_KEY: sn.build_config.to_dict(),
        "supernet_sha256": run_module.weights_checksum(sn.model),
        "trials": trials, "sampler": sampler, "seed": seed, "device": device,
        "study_name": default_study_name(Path(model).name, objs, budgets, sn.space.to_json(), model=model, task=task,
                                         limit=limit, batch_size=batch_size, num_fewshot=num_fewshot),
    }
    old = run_module.check_run_identity(run_dir, spec)
    if old is not None:
        _check_same_build(run_dir, old, spec)
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


def parse_space(value: str | None) -> dict[str, Any] | None:
    """``--space``: inline JSON (starting with ``{``) or the path of a JSON/YAML file, as a dict."""
    if value is None:
        return None
    if value.lstrip().startswith("{"):
        try:
            data = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"--space is not valid inline JSON at column {e.colno}: {e.msg} (e.g. "
                             "'{\"*:d_state\": [16, 8]}', or the path of a JSON/YAML file)") from None
        if not isinstance(data, dict):
            raise ValueError("--space must hold a mapping of dim pattern -> sizes")
        return data
    path = Path(value)
    if not path.exists():
        raise ValueError(f"--space {value!r} is neither inline JSON (starting with '{{') nor an existing JSON/YAML file")
    from osf.space import load_mapping

    try:
        return load_mapping(path)
    except ValueError as e:
        raise ValueError(f"--space: {e}") from None


def check_build_options(options: dict[str, Any]) -> dict[str, Any]:
    """The given ``--space/--importance/--block-order/--depth`` values, each checked by
    :class:`osf.SupernetConfig` (one line naming the option and what it allows)."""
    from osf.elastic.config import SupernetConfig

    given = {opt: v for opt, v in options.items() if v is not None}
    for opt, value in given.items():
        try:
            SupernetConfig(**{BUILD_OPTIONS[opt]: value})
        except ValueError as e:
            raise ValueError(f"{opt} {_shown(value)}: {' '.join(str(e).split())}") from None
    return given


def build_config(build: dict[str, Any]) -> Any:
    """The :class:`osf.SupernetConfig` the ``osf search`` options describe (defaults elsewhere)."""
    from osf.elastic.config import SupernetConfig

    return SupernetConfig(**{BUILD_OPTIONS[opt]: v for opt, v in build.items()})


def _shown(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def load_tokenizer(name: str) -> Any:
    """``--tokenizer``: a tokenizer from a local folder or the Hub, or a one-line error."""
    from transformers import AutoTokenizer

    looks_local = name.startswith((".", "/", "~")) or name.count("/") != 1 or "\\" in name
    if looks_local and not Path(name).expanduser().exists():
        raise ValueError(f"--tokenizer {name!r} does not exist; give a tokenizer folder or a hub id (namespace/name)")
    folder = Path(name).expanduser()
    if folder.is_dir() and not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise ValueError(f"--tokenizer {name!r} holds no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...); give "
                         "the folder a tokenizer was saved to (tokenizer.save_pretrained) or a hub id")
    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as e:  # OSError, ValueError, ... depending on what is missing
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"--tokenizer {name!r}: cannot load a tokenizer from it ({first}); give a folder holding "
                         "tokenizer files (tokenizer.json / tokenizer_config.json) or a hub id") from None


TOKENIZER_FILES = run_module.TOKENIZER_FILES


def check_tokenizer_shipped(model: str, task: str) -> None:
    """Before loading: the folder of a causal language model without tokenizer files cannot be scored on a
    text task unless ``--tokenizer`` names one (transformers would build an empty tokenizer from its config)."""
    folder = Path(model)
    if task in run_module.IMAGE_TASKS or not folder.is_dir() or any((folder / f).is_file() for f in TOKENIZER_FILES):
        return
    try:
        architectures = json.loads((folder / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError, AttributeError):  # no or odd config: the checks after loading decide
        return
    from osf.search.card import pipeline_tag

    if any(pipeline_tag(str(a)) == "text-generation" for a in architectures):
        raise ValueError(_no_tokenizer(model, task))


def _empty_tokenizer(model: str, pre: Any) -> bool:
    """Whether ``pre`` is a tokenizer transformers built for a folder that holds no tokenizer files."""
    from transformers import PreTrainedTokenizerBase

    folder = Path(model)
    return isinstance(pre, PreTrainedTokenizerBase) and folder.is_dir() and \
        not any((folder / f).is_file() for f in TOKENIZER_FILES)


def shipped_preprocessor(model: str, pre: Any, task: str) -> Any:
    """After loading (and the model-kind check): the tokenizer or processor the model came with; a text
    task needs a tokenizer, which built-in models and folders without tokenizer files lack."""
    if _empty_tokenizer(model, pre):
        pre = None  # transformers made it up from the config alone
    if pre is None and task not in run_module.IMAGE_TASKS and (model in _builtin_models() or Path(model).is_dir()):
        raise ValueError(_no_tokenizer(model, task))
    return pre


def _no_tokenizer(model: str, task: str) -> str:
    return (f"task {task!r} needs a tokenizer and model {model!r} ships without one: pass --tokenizer (a tokenizer "
            "folder or hub id)")


def _builtin_models() -> tuple[str, ...]:
    from osf.models import BUILTIN

    return tuple(BUILTIN)


def calibration_batches(evaluator: Any, n: int | None, task: str) -> list[Any] | None:
    """``--calibration N``: N batches of the evaluator's held-out data; left out,
    :data:`DEFAULT_CALIBRATION` of them where the task has held-out data (else none: the
    supernet then ranks on random inputs and warns); ``0``: none."""
    from osf.elastic.importance import resolve_calibration

    if n == 0:
        return None
    has_data = callable(getattr(evaluator, "calibration_batches", None))
    batches = resolve_calibration(evaluator, DEFAULT_CALIBRATION if n is None else n) if has_data else None
    if not batches and n is None:
        return None
    if not batches:
        raise ValueError(f"--calibration {n}: task {task!r} has no held-out data to calibrate on (every example is "
                         "scored and there is no training split); score fewer examples with --limit, or leave "
                         "--calibration out")
    return batches


def _refuse_build_options_for_checkpoint(model: str, build: dict[str, Any]) -> None:
    fixed = [opt for opt, v in build.items() if v is not None and opt != "--space"]
    if fixed:
        raise ValueError(f"{model!r} is a supernet checkpoint: its channels and layers were ranked when it was built "
                         f"(see its osf_supernet.json), so {', '.join(fixed)} cannot apply; give the original model "
                         "to build a new supernet, or leave them out (--space still restricts its space)")


def _check_same_build(run_dir: Path, old: dict[str, Any], spec: dict[str, Any], supernet: bool = True) -> None:
    """Resuming with another tokenizer, calibration or build setting would mix scores of other subnets
    (``supernet=False``: only what the options say, before the supernet is built)."""
    changed = []
    if supernet:
        then, now = run_module.supernet_config(old, run_dir), run_module.supernet_config(spec, run_dir)
        if then != now:
            changed.append(f"the supernet's build settings ({_diff(then.to_dict(), now.to_dict())})")
    for key, opt in (("tokenizer", "--tokenizer"), ("calibration", "--calibration"), ("space_overrides", "--space")):
        if old.get(key) != spec.get(key):
            changed.append(f"{opt} ({_shown(old.get(key)) if old.get(key) is not None else '(not given)'} then, "
                           f"{_shown(spec.get(key)) if spec.get(key) is not None else '(not given)'} now)")
    if supernet and not changed and old.get("supernet_sha256") and old["supernet_sha256"] != spec.get("supernet_sha256"):
        changed.append("the order of the supernet's channels (checksum of its reordered weights)")
    if changed:
        raise ValueError(f"{str(run_dir)!r} holds another run: {'; '.join(changed)} changed since it was made. Scores "
                         "made with other settings cannot be mixed: repeat the run's settings to resume it, or choose "
                         "a new --out")


def _diff(a: dict[str, Any], b: dict[str, Any]) -> str:
    return ", ".join(f"{k}: {_shown(a.get(k))} -> {_shown(b.get(k))}" for k in sorted(set(a) | set(b))
                     if a.get(k) != b.get(k))


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

    study = _load_study(run_dir, spec)
    build_config = run_module.supernet_config(spec, run_dir)  # before the model is loaded: a bad run.json fails at once
    net, pre = run_module.load_model(spec["model"])
    if spec.get("weights_sha256") and run_module.weights_checksum(net) != spec["weights_sha256"]:
        raise ValueError(f"the weights of model {spec['model']!r} changed since the search in {str(run_dir)!r} (checksum "
                         "differs): its scores and configs describe other weights; search again, or extract from the "
                         "model the search used")
    if spec.get("tokenizer"):
        pre = load_tokenizer(spec["tokenizer"])
    elif _empty_tokenizer(spec["model"], pre):
        pre = None  # not saved with the subnet: transformers made it up from the config alone
    if isinstance(net, osf.Supernet):
        sn = net  # a supernet checkpoint: restored as saved, space and all
        if spec.get("space_overrides") is not None:
            sn.space = sn.space.restrict(spec["space_overrides"])  # as the search restricted it
    else:
        batches = None
        drawn = spec.get("calibration")
        if drawn is None and "calibration" in spec:  # the search's default draw (osf search records the option)
            drawn = build_config.calibration_batches
        if drawn:  # the same held-out batches of the same task data
            evaluator = run_module.build_evaluator(
                spec["task"], pre, data=spec.get("data"), include_path=spec.get("include_path"), limit=spec.get("limit"),
                batch_size=spec.get("batch_size") or 16, num_fewshot=spec.get("num_fewshot"))
            batches = calibration_batches(evaluator, int(drawn), spec["task"])
        elif build_config.calibration_batches:
            raise ValueError(f"the supernet of {str(run_dir)!r} was ranked on calibration batches that were not saved "
                             "(given through the Python API): save that supernet with sn.save_pretrained, and search "
                             "and extract from the checkpoint folder")
        sn = osf.supernet(net, config=build_config, calibration=batches)  # built as the search built it
    if json.loads(sn.space.to_json()) != spec["space"]:  # a guard: the study's configs must fit this supernet
        raise ValueError(f"the supernet of {spec['model']!r} no longer has the space recorded in {run_dir}/run.json "
                         "(another osf version?); extract with the osf version that ran the search")
    if spec.get("supernet_sha256") and run_module.weights_checksum(sn.model) != spec["supernet_sha256"]:
        raise ValueError(f"the supernet rebuilt from {spec['model']!r} orders its channels differently from the one "
                         f"searched in {str(run_dir)!r} (checksum of the reordered weights differs), so the trials' "
                         "configs would pick other weights; extract with the osf version and data the search used")
    result = run_result(spec, study)
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
def show_cmd(
    run_dir: Path = typer.Argument(..., help="A folder written by `osf search`."),
    as_json: bool = typer.Option(False, "--json", help="Print the Pareto front and the best trial per budget as JSON."),
) -> None:
    """Show a search run: its Pareto front and the best trial per budget."""
    from osf.search.card import best_per_budget, plain_value
    from osf.search.objectives import BUDGETS

    spec = read_run(run_dir)
    study = _load_study(run_dir, spec)
    reference = study.user_attrs.get("osf_reference", {})
    result = run_result(spec, study)
    best = best_per_budget(result, {a: spec[a] for a in BUDGETS if spec.get(a) is not None})
    if as_json:
        front = [{k: plain_value(v) for k, v in r.items() if k != "config"} | {"config": json.loads(r["config"])}
                 for r in result.pareto.to_dict("records")]
        typer.echo(json.dumps({"model": spec["model"], "task": spec["task"], "metric": study.user_attrs.get("osf_metric"),
                               "reference": reference, "trials": len(result.trials), "pareto": front,
                               "best_per_budget": best}, indent=2))
        return
    typer.echo(f"run {run_dir}: model {spec['model']!r}, task {spec['task']!r}, {len(result.trials)} completed trial(s)")
    if study.user_attrs.get("osf_metric"):
        typer.echo(f"score: {study.user_attrs['osf_metric']}")
    typer.echo("\nPareto front:")
    typer.echo(result.table())
    typer.echo("\nBest per budget:")
    typer.echo(_budget_table(best))


def run_result(spec: dict[str, Any], study: Any) -> Any:
    """The :class:`osf.search.result.SearchResult` of a run folder's study, with its budgets as limits."""
    from osf.search.objectives import BUDGETS, resolve_budgets
    from osf.search.result import SearchResult
    from osf.space import SearchSpace

    reference = study.user_attrs.get("osf_reference", {})
    try:
        limits = resolve_budgets({a: spec[a] for a in BUDGETS if spec.get(a) is not None}, reference)
    except (KeyError, ValueError):  # a fraction of a cost the search did not measure: no line on the plot
        limits = {}
    return SearchResult(study=study, space=SearchSpace.from_json(json.dumps(spec["space"])),
                        objectives=tuple(spec["objectives"]), limits=limits, reference=reference)


def _budget_table(best: list[dict[str, Any]]) -> str:
    import pandas as pd

    rows = []
    for b in best:
        row = {"budget": b["budget"], "trial": "-" if b.get("trial") is None else b["trial"]}
        for c in ("score", "params", "macs", "latency"):
            if any(c in x for x in best):
                v = b.get(c)
                row[c] = "-" if v is None else (f"{v:,.0f}" if c in ("params", "macs") else f"{v:.4g}")
        rows.append(row)
    return pd.DataFrame(rows).to_string(index=False) if rows else "(no budgets: the run has no reference costs)"


@_errors
def eval_cmd(
    model: str = typer.Argument(..., help="A subnet folder (osf extract), a supernet checkpoint folder (scored at its "
                                "largest config), a Hugging Face folder, hub id, or built-in tiny model."),
    task: str = typer.Option(..., "--task", help="As for osf search: lm-eval task(s), cifar10, cifar100, imagenet, "
                             "imagefolder, perplexity, or clip-zeroshot:cifar10|cifar100."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Examples to score (images, lm-eval documents, "
                                        "perplexity batches); default all."),
    data: Optional[Path] = typer.Option(None, "--data", help="Data folder/file for image tasks or perplexity."),
    include_path: Optional[Path] = typer.Option(None, "--include-path", help="Folder of local lm-eval task YAMLs."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda[:N]."),
    batch_size: int = typer.Option(16, "--batch-size"),
    num_fewshot: Optional[int] = typer.Option(None, "--num-fewshot", help="Few-shot examples for lm-eval tasks (default 0)."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Tokenizer folder or hub id, for a model that "
                                            "ships without one (default: the model's own)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Score a saved subnet or a model on TASK, as `osf search` scores its trials; print score, params and MACs."""
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be a positive number of examples (or left out for all), got {limit}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be a positive integer, got {batch_size}")
    if num_fewshot is not None and num_fewshot < 0:
        raise ValueError(f"--num-fewshot must be 0 or more, got {num_fewshot}")
    if num_fewshot is not None and task in run_module.BUILTIN_TASKS:
        raise ValueError(f"--num-fewshot applies to lm-eval tasks only, not to --task {task}")
    _check_device(device)
    check_task_inputs(task, data, include_path)
    if num_fewshot is None and task not in run_module.BUILTIN_TASKS:
        num_fewshot = 0
    tok = load_tokenizer(tokenizer) if tokenizer is not None else None  # before the model: a bad one fails fast
    if tok is None:
        check_tokenizer_shipped(model, task)
    net, pre = load_for_eval(model)
    import osf

    plain = net.model if isinstance(net, osf.Supernet) else net
    run_module.check_model_kind(task, plain, model)
    pre = tok if tok is not None else shipped_preprocessor(model, pre, task)
    net.to(device)
    evaluator = run_module.build_evaluator(task, pre, data=data, include_path=include_path, limit=limit,
                                           batch_size=batch_size, num_fewshot=num_fewshot)
    run_module.check_model_fits_task(task, plain, pre, evaluator, model)
    result = score_model(net, evaluator)
    if as_json:
        typer.echo(json.dumps({"model": model, "task": task, **result}, indent=2))
        return
    macs = "-" if result["macs"] is None else f"{result['macs']:,}"
    typer.echo(f"model {model!r} on {task}: score {result['score']:.6g} ({result['metric']}); "
               f"params {result['params']:,}; MACs {macs}")


def load_for_eval(name: str) -> tuple[Any, Any]:
    """``(model, tokenizer or processor)`` for ``osf eval``: a subnet folder through ``osf.load_subnet``
    (per-layer sizes included), anything else as ``osf search`` loads its MODEL."""
    from osf.elastic.validate import SUBNET

    if (Path(name) / SUBNET.meta_file).is_file():
        import osf

        return osf.load_subnet(name), _preprocessor(name)
    return run_module.load_model(name)


def _preprocessor(folder: str) -> Any:
    """The tokenizer or image processor saved in ``folder`` (``None`` when there is none)."""
    from transformers import AutoImageProcessor, AutoTokenizer

    for cls in (AutoTokenizer, AutoImageProcessor):
        try:
            return cls.from_pretrained(folder)
        except Exception:  # no such files: try the next kind
            continue
    return None


def score_model(model: Any, evaluator: Any) -> dict[str, Any]:
    """The evaluator's score of ``model`` (a supernet at its current config, or a plain model), its
    parameters (each shared tensor once) and MACs on the evaluator's example inputs (as the search counts them)."""
    import math

    import osf

    if isinstance(model, osf.Supernet):
        with model.use(model.space.largest()):
            raw = evaluator(model.model)
        params, macs = model.num_params(model.space.largest()), _macs_or_none(
            lambda x: model.macs(model.space.largest(), inputs=x), evaluator)
    else:
        raw = evaluator(model)
        params = sum(p.numel() for p in model.parameters())  # tied tensors once
        macs = _macs_or_none(lambda x: count_macs(model, x), evaluator)
    score = float(raw)
    if not math.isfinite(score):
        raise ValueError(f"evaluator {evaluator.name!r} returned {score}; the model's outputs are not finite")
    describe = getattr(evaluator, "describe", None)
    return {"score": score, "metric": describe() if callable(describe) else evaluator.name, "params": int(params),
            "macs": macs}


def _macs_or_none(count: Callable[[Any], int], evaluator: Any) -> int | None:
    example = getattr(evaluator, "example_inputs", None)
    inputs = example() if callable(example) else None
    return None if inputs is None else int(count(inputs))


def count_macs(model: Any, inputs: Any) -> int:
    """Multiply-accumulates of one forward pass of ``model`` on ``inputs`` (``torch.utils.flop_counter``,
    as :meth:`osf.Supernet.macs` counts them)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from osf.ir.trace import normalize_inputs
    from osf.modes import eval_mode
    from osf.search.objectives import model_device

    device = model_device(model)
    args, kwargs = normalize_inputs(inputs)
    args = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)
    kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), eval_mode(model), counter:
        model(*args, **kwargs)
    return counter.get_total_flops() // 2


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
    app.command("show")(show_cmd)
    app.command("eval")(eval_cmd)
