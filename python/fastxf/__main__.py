"""python -m fastxf {info, demo, bench}"""

from __future__ import annotations

import argparse
import sys


def info() -> int:
    import platform

    import torch

    import fastxf

    b = fastxf.build_info()
    try:
        import transformers

        tf_version = transformers.__version__
    except ImportError:
        tf_version = "not installed"
    print(f"fastxf        {b['version']}")
    print(f"CUDA kernels  {'built for ' + b['cuda_archs'] if b['cuda'] else 'not built (CPU kernels only)'}")
    print(f"torch         {torch.__version__} (CUDA {torch.version.cuda or 'none'})")
    print(f"transformers  {tf_version}")
    print(f"python        {platform.python_version()}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            print(f"GPU {i}         {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB")
    else:
        print("GPUs          none visible")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastxf", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="how fastxf was built and what it sees")
    sub.add_parser("demo", help="optimize a built-in model, check it against HF, time it", add_help=False)
    sub.add_parser("bench", help="is fastxf faster for MODEL here? (bench MODEL | bench ops | bench plot)",
                   add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "info":
        return info()
    if args.command == "demo":
        from fastxf.demo import main as demo_main

        return demo_main(rest)
    from fastxf.bench import main as bench_main

    return bench_main(rest)


if __name__ == "__main__":
    sys.exit(main())
