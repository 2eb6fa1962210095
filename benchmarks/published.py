"""Published figures the tables compare against, in one place (read by table1.py and make_tables.py).

Kept free of library imports so that generating RESULTS.md needs no torch.
"""

#: Published figures (Louizos et al. 2017, Table 1; Molchanov et al. 2017 via its authors' README; Han et al.
#: 2015): error %, architecture, compression after pruning / after precision.
PUBLISHED = {
    ("lenet300", "gnj"): "1.8 % (UNVERIFIED), 278-98-13, 9.3x",
    ("lenet300", "ghs"): "1.8 % (UNVERIFIED), 311-86-14, 9.5x",
    ("lenet300", "svd"): "1.92 %, 68x non-zero",
    ("lenet300", "magnitude"): "Han et al.: 1.59 %, 12x non-zero",
    ("lenet5", "gnj"): "1.0 %, 8-13-88-13, 108x / 361x",
    ("lenet5", "ghs"): "1.0 %, 5-10-76-16, 156x / 419x",
    ("lenet5", "svd"): "0.75 %, 280x non-zero (BC's table: 1.0 %, 63x* / 228x)",
    ("lenet300", "turbo"): "not available (paper text not read)",
    ("lenet5", "turbo"): "not available (paper text not read)",
    ("lenet300", "self"): "– (the paper uses a one-conv-layer net)",
    ("lenet5", "self"): "– (the paper uses a one-conv-layer net)",
    ("lenet5", "magnitude"): "Han et al.: 0.77 %, 12x non-zero",
}
