// The Winograd transform matrices of F(2,3), F(4,3) and F(6,3). Constant data only, shared by
// the compile-time weight transform and the per-ISA tile transforms.
#pragma once

namespace walle {

// Transform matrices of F(2,3) and F(4,3) with interpolation points 0, +-1 (and +-2, inf), as
// derived by Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (2016).
template <int M>
struct WinogradMatrices;

template <>
struct WinogradMatrices<2> {
  static constexpr int T = 4;
  static constexpr float BT[4][4] = {{1, 0, -1, 0}, {0, 1, 1, 0}, {0, -1, 1, 0}, {0, 1, 0, -1}};
  static constexpr float G[4][3] = {{1, 0, 0}, {0.5f, 0.5f, 0.5f}, {0.5f, -0.5f, 0.5f}, {0, 0, 1}};
  static constexpr float AT[2][4] = {{1, 1, 1, 0}, {0, 1, -1, -1}};
};

template <>
struct WinogradMatrices<4> {
  static constexpr int T = 6;
  static constexpr float BT[6][6] = {{4, 0, -5, 0, 1, 0},  {0, -4, -4, 1, 1, 0}, {0, 4, -4, -1, 1, 0},
                                     {0, -2, -1, 2, 1, 0}, {0, 2, -1, -2, 1, 0}, {0, 4, 0, -5, 0, 1}};
  static constexpr float G[6][3] = {{1.f / 4, 0, 0},
                                    {-1.f / 6, -1.f / 6, -1.f / 6},
                                    {-1.f / 6, 1.f / 6, -1.f / 6},
                                    {1.f / 24, 1.f / 12, 1.f / 6},
                                    {1.f / 24, -1.f / 12, 1.f / 6},
                                    {0, 0, 1}};
  static constexpr float AT[4][6] = {{1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 0}, {0, 1, 1, 4, 4, 0}, {0, 1, -1, 8, -8, 1}};
};

// F(6,3) with interpolation points 0, +-1, +-2, +-1/2 and inf. B^T was solved exactly (in
// rationals) from these A^T and G, the Toom-Cook choices for the points; signs of row 0 flipped
// in both B^T and G, which leaves the product unchanged. The larger spread of the points (up to
// 32 and 1/32 in A^T) costs about one more decimal digit than F(4,3).
template <>
struct WinogradMatrices<6> {
  static constexpr int T = 8;
  static constexpr float BT[8][8] = {
      {1, 0, -21.f / 4, 0, 21.f / 4, 0, -1, 0},       {0, 1, 1, -17.f / 4, -17.f / 4, 1, 1, 0},
      {0, -1, 1, 17.f / 4, -17.f / 4, -1, 1, 0},      {0, 0.5f, 0.25f, -2.5f, -1.25f, 2, 1, 0},
      {0, -0.5f, 0.25f, 2.5f, -1.25f, -2, 1, 0},      {0, 2, 4, -2.5f, -5, 0.5f, 1, 0},
      {0, -2, 4, 2.5f, -5, -0.5f, 1, 0},              {0, -1, 0, 21.f / 4, 0, -21.f / 4, 0, 1}};
  static constexpr float G[8][3] = {{1, 0, 0},
                                    {-2.f / 9, -2.f / 9, -2.f / 9},
                                    {-2.f / 9, 2.f / 9, -2.f / 9},
                                    {1.f / 90, 1.f / 45, 2.f / 45},
                                    {1.f / 90, -1.f / 45, 2.f / 45},
                                    {32.f / 45, 16.f / 45, 8.f / 45},
                                    {32.f / 45, -16.f / 45, 8.f / 45},
                                    {0, 0, 1}};
  static constexpr float AT[6][8] = {{1, 1, 1, 1, 1, 1, 1, 0},
                                     {0, 1, -1, 2, -2, 0.5f, -0.5f, 0},
                                     {0, 1, 1, 4, 4, 0.25f, 0.25f, 0},
                                     {0, 1, -1, 8, -8, 0.125f, -0.125f, 0},
                                     {0, 1, 1, 16, 16, 1.f / 16, 1.f / 16, 0},
                                     {0, 1, -1, 32, -32, 1.f / 32, -1.f / 32, 1}};
};

}  // namespace walle
