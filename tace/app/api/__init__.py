"""The admin API and web page (`tace api`)."""
