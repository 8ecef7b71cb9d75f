"""Evaluation over the sampling stream: method x metric tables, edit analysis, the demo, reports."""
