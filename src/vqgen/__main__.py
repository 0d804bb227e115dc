from vqgen.cli import main

raise SystemExit(main())
