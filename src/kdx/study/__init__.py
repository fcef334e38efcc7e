"""Studies: a grid of runs, run or resumed, probed, and summarised with intervals over seeds.

plan.py     the study schema and the planner (every error surfaces before a run starts)
execute.py  runs the plan (processes or Ray) and writes the reports
report.py   summary.csv, summary.md and report.html: intervals over seeds, paired tests, figures
folders.py  reads a study folder (finished runs, curves, deviation probes, wall time), for report and findings
findings.py docs/findings.md from the studies configs/findings.yaml lists, through templates/findings.md.j2;
            sections.py computes its sections, measure.py its model measurements, figures.py its figures
"""
from kdx.study.execute import run_study
from kdx.study.plan import PlannedRun, StudyConfig, plan

__all__ = ["PlannedRun", "StudyConfig", "plan", "run_study"]
