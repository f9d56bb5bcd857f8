from tace.cli import main

main()
