from rlaif import main

# The guard matters: vLLM spawns worker processes that re-import the main module.
if __name__ == "__main__":
    main()
