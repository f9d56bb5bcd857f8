from tace.app.cli import main

main()
