"""``walbridge soak``: the whole pipeline under load and faults for a while, then its end state checked.

Modules: ``schema`` (the tables), ``load`` (the writers), ``pipeline`` (services and the CLI processes),
``faults`` (schedule and injectors), ``sampling`` (lag, positions, memory), ``checks`` (the end state),
``output`` (JSON, summary, plots), ``run`` (one run, start to verdict), ``cli`` (the command).
"""
