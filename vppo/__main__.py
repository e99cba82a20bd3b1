from vppo.cli import main

raise SystemExit(main())
