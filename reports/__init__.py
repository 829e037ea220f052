"""Reports: pure functions from the tidy runs DataFrame to tables, figures and pages."""
