"""The report's parts (tools/report.py is its command line). Each module imports only from utils/ and from the
modules listed before it:

  records      finding run folders and loading their runs: checked record, metrics.csv, per-image file
  groups       grouping runs into rows (one per configuration), their labels and baselines
  comparisons  the differences between rows with their intervals, the seed plan, the bootstrap, McNemar's test
  tables       the documents: markdown, JSON and CSV
  panels       the data of the figures that utils/figures.py draws
"""
