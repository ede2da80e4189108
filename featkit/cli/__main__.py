from featkit.cli import main

main()
