"""A Hydra callback that keeps ``<sweep dir>/sweep_summary.{json,md}`` up to date during a
multirun: which jobs finished (with their first evaluation metric), which failed and why.

Hydra's launchers already run every job even when one fails (the failure is raised only once
the batch of jobs is done); this callback makes the outcome readable without digging through
each job's log. It is rewritten after every job, so it is complete after the last one, also
with launchers that run jobs elsewhere (SLURM via submitit: each job's end is recorded from
the job's own process into the shared sweep folder).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from perpo.reporting.tables import markdown_table

from perpo.atomic import write_text_atomic

log = logging.getLogger("perpo")


def _job_entry(config: DictConfig, job_return: JobReturn) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "num": int(config.hydra.job.num),
        "overrides": list(job_return.overrides or []),
        "dir": str(job_return.working_dir or config.hydra.runtime.output_dir),
    }
    if job_return.status == JobStatus.COMPLETED:
        entry["status"] = "finished"
        value = job_return._return_value
        entry["value"] = value if isinstance(value, (int, float)) else None
    else:
        error = job_return._return_value
        entry["status"] = "failed"
        entry["error"] = f"{type(error).__name__}: {str(error).strip().splitlines()[-1] if str(error).strip() else ''}"
    return entry


def format_summary(jobs: list[dict[str, Any]]) -> str:
    done = [j for j in jobs if j["status"] == "finished"]
    failed = [j for j in jobs if j["status"] == "failed"]
    rows = []
    for j in sorted(jobs, key=lambda j: j["num"]):
        detail = j.get("error") if j["status"] == "failed" else ("-" if j.get("value") is None else f"{j['value']:.4f}")
        rows.append([j["num"], j["status"], " ".join(j["overrides"]), detail])
    table = markdown_table(["job", "status", "overrides", "value / error"], rows, numeric=False)
    return f"sweep: {len(done)} finished, {len(failed)} failed\n\n{table}\n"


class SweepSummary(Callback):
    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.get().mode != RunMode.MULTIRUN:
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        path = sweep_dir / "sweep_summary.json"
        jobs = {j["num"]: j for j in (json.loads(path.read_text()) if path.exists() else [])}
        entry = _job_entry(config, job_return)
        jobs[entry["num"]] = entry
        ordered = [jobs[k] for k in sorted(jobs)]
        write_text_atomic(path, json.dumps(ordered, indent=2))
        text = format_summary(ordered)
        write_text_atomic(sweep_dir / "sweep_summary.md", text)
        if entry["status"] == "failed":
            log.error("job %d failed (%s); the sweep goes on", entry["num"], entry["error"])
        log.info("%s(written to %s)", text, sweep_dir / "sweep_summary.md")
