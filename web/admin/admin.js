// herald admin dashboard
