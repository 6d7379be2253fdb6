# Final evaluation of every trained row in the real environment (fresh episode seeds).

rule evaluate:
    output: eval_file("{env}", "{algo}", "{seed}")
    input: LIB, "stages/evaluate.py", run_dir("{env}", "{algo}", "{seed}")
    params:
        declared=declared("evaluate"),
        set=overrides("evaluate"),
    log: log_file("evaluate", "{env}", "{algo}", "seed{seed}")
    threads: 1
    resources: **job_resources("evaluate", P)
    shell: "python stages/evaluate.py --env {wildcards.env} --algo {wildcards.algo} --seed {wildcards.seed}{params.set}"
