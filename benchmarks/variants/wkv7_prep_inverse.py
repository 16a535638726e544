"""`prep`'s inverse with E = D A_ab carried along (fifteenth session): per doubling level P = E on the level's
off-diagonal blocks, then D += P D and E += P E, two independent products (one step of the latency chain per level
instead of two: D A_ab, then P D). Same outputs within float32 rounding (interpreter and H100), but slower on the
H100 (one process): K1 2.32 (head) / 3.17 (E_carried) / 2.54 ms (E_carried_acc_init: the products added into
accumulators initialised with D and E, `pl.run_state`), K5 2.61 / 3.87 / 3.29 ms. Two more tiles stored per level and
D, E and P live at once: the inverse's chain is not only latency. Not kept. (E_carried_acc_init issues `plgpu.wgmma`
with register operands directly, which the Mosaic GPU interpreter cannot run: `--verify` on the GPU only.)

  python benchmarks/kernel_variants.py benchmarks/variants/wkv7_prep_inverse.py --kernel prep [--verify 1,128,1,64]
(--verify with E_carried_acc_init: on a GPU)
"""

SRC = "pallas_kernels/wkv7/gpu.py"
A_ROWS = """        A_ab = jnp.where(strict, all_sum(read(0)), 0.0)
        D = jnp.where(ri == ci, 1.0, 0.0) + jnp.where(((ri >> 1) == (ci >> 1)) & (ri != ci), A_ab, 0.0)
        store_split(A_ab, I0, I1)
        return D, jnp.where(strict, all_sum(read(1)), 0.0)

      D, A_ak = mm.scope([LL, LL], a_rows)
"""
A_ROWS_E = """        A_ab = jnp.where(strict, all_sum(read(0)), 0.0)
        return A_ab, jnp.where(strict, all_sum(read(1)), 0.0)

      E, A_ak = mm.scope([LL, LL], a_rows)
"""
LOOP = """      def doubling(shift, D):  # one loop body (so the code is fetched once)
        off = ((ri >> (shift + 1)) == (ci >> (shift + 1))) & ((ri >> shift) != (ci >> shift))
        store_split(D, I2, I3)
        plgpu.commit_smem()
        P = jnp.where(off, mm(LL, x3(split(D), (I0, I1))), 0.0)
        return D + mm(LL, x3(split(P), (I2, I3)))

      D = lax.fori_loop(1, levels, doubling, D)
"""
OFF = """      def off_diagonal(shift, E):
        off = ((ri >> (shift + 1)) == (ci >> (shift + 1))) & ((ri >> shift) != (ci >> shift))
        return split(jnp.where(off, E, 0.0))

      def doubling(shift, DE):
        D, E = DE
        store_split(D, I2, I3)
        store_split(E, I0, I1)
        plgpu.commit_smem()
        P = off_diagonal(shift, E)
"""
LAST = """      store_split(D, I2, I3)
      plgpu.commit_smem()
      D = D + mm(LL, x3(off_diagonal(levels - 1, E), (I2, I3)))
"""
LOOP_SCOPE = OFF + """
        def both(issue, read):
          issue(0, x3(P, (I2, I3)))
          issue(1, x3(P, (I0, I1)))
          return D + read(0), E + read(1)

        return mm.scope([LL, LL], both)

      D, E = lax.fori_loop(0, levels - 1, doubling, (jnp.where(ri == ci, 1.0, 0.0), E))
""" + LAST
LOOP_INIT = OFF + """
        def both(accs):
          for acc, rhs in zip(accs, ((I2, I3), (I0, I1))):
            for lhs_, rhs_ in x3(P, rhs):
              plgpu.wgmma(acc, lhs_, rhs_)

        D, E = pl.run_state(both)((plgpu.ACC.init(D), plgpu.ACC.init(E)))
        return lax.optimization_barrier((D, E))

      eye = plgpu.layout_cast(jnp.where(ri == ci, 1.0, 0.0), plgpu.Layout.WGMMA)
      D, E = lax.fori_loop(0, levels - 1, doubling, (eye, E))
""" + LAST

VARIANTS = {
  "head": (SRC, []),
  "E_carried": (SRC, [(A_ROWS, A_ROWS_E), (LOOP, LOOP_SCOPE)]),
  "E_carried_acc_init": (SRC, [(A_ROWS, A_ROWS_E), (LOOP, LOOP_INIT)]),
}
