"""`zscir serve`'s job: the service a process loads once (`service`: backbone, methods, indexes),
its request (`config`) and its threading (`threads`). The HTTP app is in `zscir_cli.web`."""
