from hpsearch.cli.main import main

main()
