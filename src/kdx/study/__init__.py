"""Studies: a grid of runs, run or resumed, probed, and summarised with intervals over seeds.

plan.py     the study schema and the planner (every error surfaces before a run starts)
execute.py  runs the plan (processes or Ray) and writes the reports
report.py   summary.csv, summary.md and report.html: intervals over seeds, paired tests, figures
"""
from kdx.study.execute import run_study
from kdx.study.plan import PlannedRun, StudyConfig, plan

__all__ = ["PlannedRun", "StudyConfig", "plan", "run_study"]
