from saver_search.cli.main import main

main()
