from pipeline.cli import main

# The guard matters: extraction workers start from a forkserver, which imports the parent's
# __main__ module; without it every worker would run the command line again.
if __name__ == "__main__":
    main()
