/* The one list of table entries: kernels_instantiate.h includes it last, after
 * instantiating kernels_body.h for one element type (FASTCE_SFX) of the ISA
 * FASTCE_ISA; it defines the function that fills that type's part of the
 * table, with the kernels of the whole ISA that the same pass defines. */

#define FASTCE_FILL_TYPE(SFX)                                                                     \
    ops->row_max_##SFX = FASTCE_NAME5(fastce_row_max_, SFX, _, FASTCE_ISA, );                     \
    ops->row_max_sumexp_##SFX = FASTCE_NAME5(fastce_row_max_sumexp_, SFX, _, FASTCE_ISA, );       \
    ops->row_max_sumexp_ahead_##SFX =                                                             \
        FASTCE_NAME5(fastce_row_max_sumexp_ahead_, SFX, _, FASTCE_ISA, );                         \
    ops->row_sum_shifted_##SFX = FASTCE_NAME5(fastce_row_sum_shifted_, SFX, _, FASTCE_ISA, );     \
    ops->sum_exp_##SFX = FASTCE_NAME5(fastce_sum_exp_, SFX, _, FASTCE_ISA, );                     \
    ops->row_scaled_exp_##SFX = FASTCE_NAME5(fastce_row_scaled_exp_, SFX, _, FASTCE_ISA, );       \
    ops->row_shift_##SFX = FASTCE_NAME5(fastce_row_shift_, SFX, _, FASTCE_ISA, );                 \
    ops->row_softmax_##SFX = FASTCE_NAME5(fastce_row_softmax_, SFX, _, FASTCE_ISA, );             \
    ops->row_pending_##SFX = FASTCE_NAME5(fastce_row_pending_, SFX, _, FASTCE_ISA, );             \
    ops->row_eval_terms_##SFX = FASTCE_NAME5(fastce_row_eval_terms_, SFX, _, FASTCE_ISA, );       \
    ops->long_pair_terms_##SFX = FASTCE_NAME5(fastce_long_pair_terms_, SFX, _, FASTCE_ISA, );     \
    ops->gather_tile_##SFX = FASTCE_NAME5(fastce_gather_tile_, SFX, _, FASTCE_ISA, );             \
    ops->scatter_tile_##SFX = FASTCE_NAME5(fastce_scatter_tile_, SFX, _, FASTCE_ISA, );           \
    ops->tile_max_##SFX = FASTCE_NAME5(fastce_tile_max_, SFX, _, FASTCE_ISA, );                   \
    ops->tile_sumexp_##SFX = FASTCE_NAME5(fastce_tile_sumexp_, SFX, _, FASTCE_ISA, );             \
    ops->tile_scaled_exp_##SFX = FASTCE_NAME5(fastce_tile_scaled_exp_, SFX, _, FASTCE_ISA, );     \
    ops->tile_shift_##SFX = FASTCE_NAME5(fastce_tile_shift_, SFX, _, FASTCE_ISA, );               \
    ops->tile_stats_##SFX = FASTCE_NAME5(fastce_tile_stats_, SFX, _, FASTCE_ISA, );               \
    ops->tile_scaled_exp_classes_##SFX =                                                          \
        FASTCE_NAME5(fastce_tile_scaled_exp_classes_, SFX, _, FASTCE_ISA, );                      \
    ops->tile_rank_entropy_##SFX = FASTCE_NAME5(fastce_tile_rank_entropy_, SFX, _, FASTCE_ISA, ); \
    ops->bce_logits_##SFX = FASTCE_NAME5(fastce_bce_logits_, SFX, _, FASTCE_ISA, );               \
    ops->bce_probs_##SFX = FASTCE_NAME5(fastce_bce_probs_, SFX, _, FASTCE_ISA, );                 \
    ops->first_outside_unit_##SFX =                                                               \
        FASTCE_NAME5(fastce_first_outside_unit_, SFX, _, FASTCE_ISA, );                           \
    ops->transform_##SFX = FASTCE_NAME5(fastce_transform_, SFX, _, FASTCE_ISA, );                 \
    ops->transform_grad_##SFX = FASTCE_NAME5(fastce_transform_grad_, SFX, _, FASTCE_ISA, );

void FASTCE_NAME5(fastce_fill_ops_, FASTCE_ISA, _, FASTCE_SFX, )(fastce_ops_t *ops) {
#ifdef FASTCE_F64
    FASTCE_FILL_TYPE(f64)
    ops->tile_log = FASTCE_NAME5(fastce_tile_log_, FASTCE_ISA, , , );
    ops->tile_exp_neg = FASTCE_NAME5(fastce_tile_exp_neg_, FASTCE_ISA, , , );
    ops->dd_add_columns = FASTCE_NAME5(fastce_dd_add_columns_, FASTCE_ISA, , , );
#else
    FASTCE_FILL_TYPE(f32)
    ops->stream_fence = FASTCE_NAME5(fastce_stream_fence_, FASTCE_ISA, , , );
    ops->half_to_f32 = FASTCE_NAME5(fastce_half_to_f32_, FASTCE_ISA, , , );
    ops->bce_half = FASTCE_NAME5(fastce_bce_half_, FASTCE_ISA, , , );
    ops->count_targets = FASTCE_NAME5(fastce_count_targets_, FASTCE_ISA, , , );
#endif
}

#undef FASTCE_FILL_TYPE
