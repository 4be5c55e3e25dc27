"""One module per DVC stage; each `main(argv)` takes its paths from dvc.yaml's command line."""
