"""`tace bench`: reproducible performance runs that print figures and the ratios they are judged by."""
