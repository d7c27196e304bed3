/* The stride-1 tile functions (phase planes make stride 2 look like stride 1) and the span
 * tiles of 1x1 convolutions, at every width down to one float (tiles.h). */
#include "tiles.h"

DEFINE_TILE(1, 8, vf, VW)
DEFINE_SPAN_TILE(1, 8, vf, VW)
DEFINE_SPAN_TILE(2, 8, vf, VW)
DEFINE_SPAN_TILE(3, 8, vf, VW)
DEFINE_SPAN_TILE(1, 1, vf, VW)
DEFINE_SPAN_TILE(1, 2, vf, VW)
DEFINE_SPAN_TILE(1, 3, vf, VW)
DEFINE_SPAN_TILE(1, 4, vf, VW)
DEFINE_SPAN_TILE(1, 5, vf, VW)
DEFINE_SPAN_TILE(1, 6, vf, VW)
DEFINE_SPAN_TILE(1, 7, vf, VW)
ROWS_1_TO_3(4, vf, VW)
ROWS_1_TO_3(2, vf, VW)
ROWS_4_TO_6(2, vf, VW)
ROWS_1_TO_8(1, vf, VW)
#if VW > 8
ROWS_1_TO_8(1, v8, 8)
#endif
ROWS_1_TO_8(1, v4, 4)
ROWS_1_TO_8(1, v2, 2)
ROWS_1_TO_8(1, v1, 1)

const tile_kind KINDS[] = {
    {8 * VW, 1, {{0, tile_vf_8_1}, {0, tile_vf_8_1_16}}},
    {4 * VW, 3, {LIST_1_TO_3(4, vf, ), LIST_1_TO_3(4, vf, _16)}},
    {2 * VW, 6, {LIST_1_TO_6(2, vf, ), LIST_1_TO_6(2, vf, _16)}},
    {VW, 8, {LIST_1_TO_8(1, vf, ), LIST_1_TO_8(1, vf, _16)}},
#if VW > 8
    {8, 8, {LIST_1_TO_8(1, v8, ), LIST_1_TO_8(1, v8, _16)}},
#endif
    {4, 8, {LIST_1_TO_8(1, v4, ), LIST_1_TO_8(1, v4, _16)}},
    {2, 8, {LIST_1_TO_8(1, v2, ), LIST_1_TO_8(1, v2, _16)}},
    {1, 8, {LIST_1_TO_8(1, v1, ), LIST_1_TO_8(1, v1, _16)}},
};
const tile_fn SPAN_TILES[2][4] = {{0, tile_vf_8_1_c, tile_vf_8_2_c, tile_vf_8_3_c},
                                  {0, tile_vf_8_1_16_c, tile_vf_8_2_16_c, tile_vf_8_3_16_c}};
const tile_fn SPAN_TAILS[2][8] = {{0, tile_vf_1_1_c, tile_vf_2_1_c, tile_vf_3_1_c, tile_vf_4_1_c, tile_vf_5_1_c, tile_vf_6_1_c, tile_vf_7_1_c},
                                  {0, tile_vf_1_1_16_c, tile_vf_2_1_16_c, tile_vf_3_1_16_c, tile_vf_4_1_16_c, tile_vf_5_1_16_c, tile_vf_6_1_16_c, tile_vf_7_1_16_c}};
