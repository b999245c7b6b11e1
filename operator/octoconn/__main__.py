from octoconn.cli import main

raise SystemExit(main())
