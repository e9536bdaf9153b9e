from saver_search.cli import main

main()
