/* The direct stride-2 tile functions: a batch of one vector a pixel (s2) or two (s2p), see
 * DEFINE_TILE_S2 in tiles.h. */
#include "tiles.h"

DEFINE_TILE_S2(1, 8)
DEFINE_TILE_S2(1, 4) DEFINE_TILE_S2(2, 4) DEFINE_TILE_S2(3, 4)
DEFINE_TILE_S2(1, 2) DEFINE_TILE_S2(2, 2) DEFINE_TILE_S2(3, 2) DEFINE_TILE_S2(4, 2) DEFINE_TILE_S2(5, 2) DEFINE_TILE_S2(6, 2)
DEFINE_TILE_S2(1, 1) DEFINE_TILE_S2(2, 1) DEFINE_TILE_S2(3, 1) DEFINE_TILE_S2(4, 1) DEFINE_TILE_S2(5, 1) DEFINE_TILE_S2(6, 1)
DEFINE_TILE_S2(7, 1) DEFINE_TILE_S2(8, 1)
DEFINE_TILE_S2P(1, 8)
DEFINE_TILE_S2P(1, 4) DEFINE_TILE_S2P(2, 4) DEFINE_TILE_S2P(3, 4)
DEFINE_TILE_S2P(1, 2) DEFINE_TILE_S2P(2, 2) DEFINE_TILE_S2P(3, 2) DEFINE_TILE_S2P(4, 2) DEFINE_TILE_S2P(5, 2)
DEFINE_TILE_S2P(6, 2)

const tile_kind KINDS_S2[] = {
    {8 * VW, 1, {{0, tile_vf_8_1_s2}, {0, tile_vf_8_1_16_s2}}},
    {4 * VW, 3, {LIST_1_TO_3(4, vf, _s2), LIST_1_TO_3(4, vf, _16_s2)}},
    {2 * VW, 6, {LIST_1_TO_6(2, vf, _s2), LIST_1_TO_6(2, vf, _16_s2)}},
    {VW, 8, {LIST_1_TO_8(1, vf, _s2), LIST_1_TO_8(1, vf, _16_s2)}},
};
const tile_kind KINDS_S2P[] = {
    {8 * VW, 1, {{0, tile_vf_8_1_s2p}, {0, tile_vf_8_1_16_s2p}}},
    {4 * VW, 3, {LIST_1_TO_3(4, vf, _s2p), LIST_1_TO_3(4, vf, _16_s2p)}},
    {2 * VW, 6, {LIST_1_TO_6(2, vf, _s2p), LIST_1_TO_6(2, vf, _16_s2p)}},
};
